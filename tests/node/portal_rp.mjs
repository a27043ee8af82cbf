// A relying party of « Mon portail » (openid-client), standing for one of the region's services.
// Usage: node portal_rp.mjs '<json config>' — config: {port, issuer, client_id, client_secret, name}.
// Prints {"ready": true}, then one JSON line per event: {"event": "login", "claims", "userinfo"},
// {"event": "error", "message"}, {"event": "backchannel_logout", "sid", "sub"}.
//
// GET /login (the tile, with ?iss=) starts the code flow with PKCE, state and nonce; GET /cb
// finishes it (openid-client checks iss, state, the ID token's signature, aud, nonce, expiry);
// GET / shows who is logged in here; POST /backchannel takes the provider's logout token
// (verified with the provider's JWKS) and ends the local session it names.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import * as client from 'openid-client';

const cfg = JSON.parse(process.argv[2]);
const base = `http://127.0.0.1:${cfg.port}`;
const redirectUri = `${base}/cb`;
const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

let config;
async function provider() {
  if (!config) {
    config = await client.discovery(new URL(cfg.issuer), cfg.client_id, cfg.client_secret,
      client.ClientSecretBasic(cfg.client_secret), { execute: [client.allowInsecureRequests] });
  }
  return config;
}

const pending = new Map(); // state -> {verifier, nonce}
const sessions = new Map(); // our cookie -> {claims, ended}

function cookieOf(req) {
  const m = (req.headers.cookie || '').match(/(?:^|;\s*)rp_session=([^;]+)/);
  return m ? m[1] : null;
}

async function text(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return data;
}

function html(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>${cfg.name}</title></head><body><h1>${cfg.name}</h1>${body}</body></html>`);
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, base);
  try {
    if (url.pathname === '/login') {
      const iss = url.searchParams.get('iss');
      if (iss && iss !== cfg.issuer) return html(res, 400, '<p id="error">Émetteur inconnu</p>');
      const conf = await provider();
      const verifier = client.randomPKCECodeVerifier();
      const state = client.randomState();
      const nonce = client.randomNonce();
      pending.set(state, { verifier, nonce });
      const target = client.buildAuthorizationUrl(conf, {
        redirect_uri: redirectUri, scope: 'openid profile', state, nonce,
        code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
      });
      res.writeHead(303, { location: target.href }).end();
      return;
    }
    if (url.pathname === '/cb') {
      const conf = await provider();
      const state = url.searchParams.get('state');
      const flow = pending.get(state);
      pending.delete(state);
      if (!flow) return html(res, 400, '<p id="error">État inconnu</p>');
      const tokens = await client.authorizationCodeGrant(conf, url, {
        pkceCodeVerifier: flow.verifier, expectedState: state, expectedNonce: flow.nonce, idTokenExpected: true,
      });
      const claims = tokens.claims();
      const userinfo = await client.fetchUserInfo(conf, tokens.access_token, claims.sub);
      const cookie = randomBytes(16).toString('hex');
      sessions.set(cookie, { claims, ended: false, accessToken: tokens.access_token });
      say({ event: 'login', claims, userinfo, id_token: tokens.id_token });
      res.writeHead(303, { location: '/', 'set-cookie': `rp_session=${cookie}; HttpOnly; Path=/; SameSite=Lax` }).end();
      return;
    }
    if (url.pathname === '/backchannel' && req.method === 'POST') {
      const conf = await provider();
      const meta = conf.serverMetadata();
      const form = new URLSearchParams(await text(req));
      const { payload } = await jwtVerify(form.get('logout_token'), createRemoteJWKSet(new URL(meta.jwks_uri)), {
        issuer: meta.issuer, audience: cfg.client_id, typ: 'logout+jwt',
      });
      if (!payload.events || !payload.events['http://schemas.openid.net/event/backchannel-logout'] || payload.nonce) {
        throw new Error('not a logout token');
      }
      for (const s of sessions.values()) {
        if (s.claims.sid === payload.sid) s.ended = true;
      }
      say({ event: 'backchannel_logout', sid: payload.sid, sub: payload.sub });
      res.writeHead(200).end();
      return;
    }
    if (url.pathname === '/') {
      const s = sessions.get(cookieOf(req));
      if (!s || s.ended) return html(res, 200, `<p id="user">Non connecté</p><p><a href="/login">Se connecter</a></p>`);
      return html(res, 200, `<p id="user">Connecté : ${s.claims.name}</p><p id="nid">${s.claims.national_id || ''}</p>`);
    }
    res.writeHead(404).end();
  } catch (err) {
    say({ event: 'error', message: String(err && err.message ? err.message : err), code: err && err.code });
    html(res, 400, `<p id="error">${String(err && err.message ? err.message : err)}</p>`);
  }
});
server.listen(cfg.port, '127.0.0.1', () => say({ ready: true }));
