// An OpenID provider standing for Pro Santé Connect in the tests (oidc-provider), on 127.0.0.1.
// Usage: node psc_provider.mjs '<json config>'  — config: {port, issuer, clients: [...],
// accounts: {login: claims}, jwks: {keys: [private JWK]}, password}. Prints {"ready": true} once up.
//
// Like the real one (DESIGN §5): scopes `openid scope_all`, acr `eidas1`, claims SubjectNameID,
// given_name, family_name, SubjectRefPro.exercices[]; the user info comes back as a signed JWT.
// For the attack tests, POST /__test/tamper {"mode": ...} alters the next ID token the token
// endpoint gives (nonce, iss, aud, acr, expired: re-signed with the provider's key; forged:
// signed with another key under the same kid).
import http from 'node:http';
import { SignJWT, decodeJwt, generateKeyPair, importJWK } from 'jose';
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.argv[2]);
const SCOPE_CLAIMS = ['SubjectNameID', 'given_name', 'family_name', 'SubjectRefPro'];

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients.map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    userinfo_signed_response_alg: 'RS256',
    ...c,
  })),
  jwks: cfg.jwks,
  scopes: ['openid', 'scope_all'],
  claims: { openid: ['sub'], scope_all: SCOPE_CLAIMS },
  acrValues: ['eidas1'],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false }, jwtUserinfo: { enabled: true } },
  cookies: { keys: ['psc-test-cookie-key'] },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const claims = cfg.accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  // First-party client: the grant is given at login, no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid scope_all');
    grant.addOIDCClaims(SCOPE_CLAIMS);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

let tamper = null;
const signingJwk = cfg.jwks.keys[0];
const signingKey = await importJWK(signingJwk, 'RS256');
const { privateKey: foreignKey } = await generateKeyPair('RS256');

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && tamper && ctx.body && ctx.body.id_token) {
    const mode = tamper;
    tamper = null;
    const claims = decodeJwt(ctx.body.id_token);
    const now = Math.floor(Date.now() / 1000);
    if (mode === 'nonce') claims.nonce = 'un-autre-nonce';
    if (mode === 'iss') claims.iss = 'https://faux-psc.invalid';
    if (mode === 'aud') claims.aud = 'un-autre-service';
    if (mode === 'acr') claims.acr = 'eidas-faible';
    if (mode === 'expired') { claims.iat = now - 7200; claims.exp = now - 3600; }
    const key = mode === 'forged' ? foreignKey : signingKey;
    ctx.body.id_token = await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: signingJwk.kid }).sign(key);
  }
});

const page = (uid, error) => `<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>Pro Santé Connect (test)</title></head>
<body><h1>Pro Santé Connect — fournisseur de test</h1>${error ? `<p class="error">${error}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
<label for="login">Identifiant e-CPS</label><input id="login" name="login" autofocus>
<label for="password">Code</label><input id="password" name="password" type="password">
<button type="submit">Se connecter</button></form></body></html>`;

async function text(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return data;
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, cfg.issuer);
    if (url.pathname === '/__test/tamper' && req.method === 'POST') {
      tamper = JSON.parse((await text(req)) || '{}').mode || null;
      res.writeHead(204).end();
      return;
    }
    const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (match) {
      const details = await provider.interactionDetails(req, res);
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page(details.uid));
        return;
      }
      const form = new URLSearchParams(await text(req));
      const login = form.get('login');
      if (!cfg.accounts[login] || form.get('password') !== cfg.password) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page(details.uid, 'Identifiant ou code incorrect'));
        return;
      }
      await provider.interactionFinished(req, res, { login: { accountId: login, acr: 'eidas1', amr: ['mfa'] } },
        { mergeWithLastSubmission: false });
      return;
    }
    callback(req, res);
  } catch (err) {
    process.stderr.write(`${err.stack}\n`);
    if (!res.headersSent) res.writeHead(500).end(String(err));
  }
});
server.listen(cfg.port, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ ready: true })}\n`));
