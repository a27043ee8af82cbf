/* MonSisra — visio (issue 17): WebRTC in a mesh of up to 6 people. The server only relays the
   signalling (offer, answer, ICE candidates) between the call's joined members over the live
   socket; the media go from browser to browser (or through TURN), never in the clear.

   Who offers: whoever joins sends an offer to every member already there, who answers.
   Pages: the conversation page with ?visio=<call> (the chat beside the call is the conversation),
   /visio/<call> (teleconsultation, professional side), /visio (teleconsultations list), and the
   patient's page /teleconsultation/<link>. ?ice=relay forces TURN only (tests, benchmark). */
(function () {
  "use strict";
  function $(sel, root) { return (root || document).querySelector(sel); }
  var csrfMeta = $('meta[name="csrf-token"]');
  var CSRF = csrfMeta ? csrfMeta.content : "";

  function api(method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "X-CSRF-Token": CSRF } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts).then(function (r) {
      if (r.status === 204) return null;
      return r.json().then(function (data) {
        if (!r.ok) throw new Error(data.detail || "Erreur " + r.status);
        return data;
      });
    });
  }

  // When each step of joining happened (Date.now(); the benchmark reads them).
  var marks = window.monsisraMarks = window.monsisraMarks || {};
  function mark(name) { if (!marks[name]) marks[name] = Date.now(); }
  mark("script");

  function status(text) { var s = $("#visio-status"); if (s) s.textContent = text; }

  /* ---- the mesh ------------------------------------------------------------------------- */
  // The connections are negotiated before the camera is open: each has an audio and a video
  // transceiver from the start, and the tracks are put in (replaceTrack) as soon as they exist.
  function Mesh(opts) {
    this.send = opts.send;           // function (message) on the live socket
    this.callId = opts.callId;
    this.peer = opts.peer;           // my signalling address
    this.config = { iceServers: opts.iceServers || [], iceTransportPolicy: opts.relay ? "relay" : "all" };
    this.local = new MediaStream();  // my tracks (filled by setMedia)
    this.sending = { audio: null, video: null };  // what each connection sends now (null: nothing)
    this.state = { audio: true, video: true };    // my microphone and camera, as the others are told
    this.sharing = false;            // my screen replaces my camera
    this.pcs = {};                   // peer -> RTCPeerConnection
    this.names = {};
    this.pending = {};               // peer -> candidates before the remote description
    this.signals = 0;                // signalling messages sent (benchmark)
    this.grid = $("#visio-grid");
    // A connection made in advance gathers its ICE candidates (a TURN allocation for relay-only)
    // while nobody is there yet; the first peer to come takes it.
    this.spare = this.make();
  }
  Mesh.prototype.make = function () {
    var config = {};
    for (var k in this.config) config[k] = this.config[k];
    config.iceCandidatePoolSize = 1;
    return new RTCPeerConnection(config);
  };
  Mesh.prototype.post = function (to, kind, extra) {
    var msg = { call_id: this.callId, to: to, kind: kind };
    for (var k in extra) msg[k] = extra[k];
    this.signals++;
    this.send(msg);
  };
  Mesh.prototype.tile = function (peer) {
    var id = "visio-peer-" + peer.replace(/[^A-Za-z0-9_-]/g, "");
    var fig = document.getElementById(id);
    if (!fig && this.grid) {
      fig = document.createElement("figure");
      fig.className = "visio-tile"; fig.id = id; fig.dataset.peer = peer;
      var v = document.createElement("video");
      v.autoplay = true; v.playsInline = true;
      var off = document.createElement("p");
      off.className = "visio-off"; off.textContent = "Caméra coupée"; off.hidden = true;
      var cap = document.createElement("figcaption");
      var name = document.createElement("span"); name.className = "visio-name";
      name.textContent = this.names[peer] || "Participant";
      var mic = document.createElement("span");
      mic.className = "visio-mic-off"; mic.textContent = " · micro coupé"; mic.hidden = true;
      cap.append(name, mic);
      fig.append(v, off, cap);
      this.grid.appendChild(fig);
    } else if (fig && this.names[peer]) {
      $(".visio-name", fig).textContent = this.names[peer];
    }
    return fig;
  };
  Mesh.prototype.connection = function (peer) {
    var self = this, pc = this.pcs[peer];
    if (pc) return pc;
    pc = this.spare || this.make();
    this.spare = null;
    this.pcs[peer] = pc;
    pc.onicecandidate = function (e) {
      if (e.candidate) self.post(peer, "candidate", { candidate: e.candidate.toJSON() });
    };
    pc.ontrack = function (e) {
      mark("track");
      var fig = self.tile(peer);
      var stream = e.streams[0] || new MediaStream([e.track]);
      if (fig) { var v = $("video", fig); if (v.srcObject !== stream) v.srcObject = stream; }
    };
    pc.onconnectionstatechange = function () {
      if (pc.connectionState === "connected") { mark("connected"); status("En visio"); }
      if (pc.connectionState === "failed") status("Connexion impossible avec " + (self.names[peer] || "un participant"));
    };
    return pc;
  };
  // Make every transceiver of a connection send what we send now (after the remote offer too).
  Mesh.prototype.dress = function (pc, answering) {
    var self = this;
    pc.getTransceivers().forEach(function (t) {
      var kind = t.receiver.track.kind;
      if (answering) {
        t.direction = "sendrecv";
        if (t.sender.setStreams) t.sender.setStreams(self.local);
      }
      if (t.sender.track !== self.sending[kind]) t.sender.replaceTrack(self.sending[kind]).catch(function () {});
    });
  };
  Mesh.prototype.offer = function (peer, name) {
    var self = this, pc;
    this.names[peer] = name;
    pc = this.connection(peer);
    this.tile(peer);
    ["audio", "video"].forEach(function (kind) {
      pc.addTransceiver(self.sending[kind] || kind, { direction: "sendrecv", streams: [self.local] });
    });
    return pc.createOffer().then(function (o) { return pc.setLocalDescription(o); })
      .then(function () { mark("offer"); self.post(peer, "offer", { sdp: pc.localDescription.sdp }); self.tell(peer); });
  };
  Mesh.prototype.flush = function (peer) {
    var pc = this.pcs[peer], list = this.pending[peer] || [];
    delete this.pending[peer];
    list.forEach(function (c) { pc.addIceCandidate(c).catch(function () { /* stale */ }); });
  };
  // My microphone and camera state, to one peer (or all): the others show « micro coupé »…
  Mesh.prototype.tell = function (peer) {
    var state = { audio: this.state.audio, video: this.state.video || this.sharing };
    if (peer) { if (!state.audio || !state.video) this.post(peer, "state", state); return; }
    for (var p in this.pcs) this.post(p, "state", state);
  };
  Mesh.prototype.onSignal = function (ev) {
    var self = this, pc;
    if (ev.call_id !== this.callId || ev.to !== this.peer) return;
    mark("signal-" + ev.kind);
    if (ev.kind === "offer") {
      pc = this.connection(ev.from);
      this.tile(ev.from);
      pc.setRemoteDescription({ type: "offer", sdp: ev.sdp })
        .then(function () { self.dress(pc, true); self.flush(ev.from); return pc.createAnswer(); })
        .then(function (a) { return pc.setLocalDescription(a); })
        .then(function () { self.post(ev.from, "answer", { sdp: pc.localDescription.sdp }); self.tell(ev.from); });
    } else if (ev.kind === "answer") {
      pc = this.pcs[ev.from];
      if (pc) pc.setRemoteDescription({ type: "answer", sdp: ev.sdp }).then(function () { self.flush(ev.from); });
    } else if (ev.kind === "candidate" && ev.candidate) {
      pc = this.pcs[ev.from];
      if (pc && pc.remoteDescription) pc.addIceCandidate(ev.candidate).catch(function () { /* stale */ });
      else (this.pending[ev.from] = this.pending[ev.from] || []).push(ev.candidate);
    } else if (ev.kind === "state") {
      var fig = this.tile(ev.from);
      if (!fig) return;
      fig.classList.toggle("mic-off", !ev.audio);
      fig.classList.toggle("camera-off", !ev.video);
      $(".visio-mic-off", fig).hidden = !!ev.audio;
      $(".visio-off", fig).hidden = !!ev.video;
    }
  };
  Mesh.prototype.drop = function (peer) {
    var pc = this.pcs[peer];
    if (pc) pc.close();
    delete this.pcs[peer];
    var fig = document.getElementById("visio-peer-" + peer.replace(/[^A-Za-z0-9_-]/g, ""));
    if (fig) fig.remove();
  };
  Mesh.prototype.close = function () {
    for (var p in this.pcs) this.drop(p);
    if (this.spare) { this.spare.close(); this.spare = null; }
    this.local.getTracks().forEach(function (t) { t.stop(); });
  };
  // Send this track (or nothing: null) as my audio or video on every connection.
  Mesh.prototype.sendTrack = function (kind, track) {
    this.sending[kind] = track;
    for (var p in this.pcs) this.dress(this.pcs[p]);
  };
  Mesh.prototype.replaceVideo = function (track) { this.sendTrack("video", track); };
  // The camera and microphone, once open (the connections may already be up).
  Mesh.prototype.setMedia = function (stream) {
    var self = this;
    stream.getTracks().forEach(function (t) { self.local.addTrack(t); });
    var audio = stream.getAudioTracks()[0] || null, video = stream.getVideoTracks()[0] || null;
    if (audio) { audio.enabled = this.state.audio; if (this.state.audio) this.sendTrack("audio", audio); }
    if (video) { video.enabled = this.state.video; if (this.state.video && !this.sharing) this.sendTrack("video", video); }
    var v = $("#visio-local"); if (v) v.srcObject = this.local;
  };
  function counter(field, kind) {
    return function () {
      var pcs = this.pcs;
      return Promise.all(Object.keys(pcs).map(function (p) { return pcs[p].getStats(); })).then(function (all) {
        var n = 0;
        all.forEach(function (stats) {
          stats.forEach(function (r) { if (r.type === (field === "packetsSent" ? "outbound-rtp" : "inbound-rtp") && r.kind === kind) n += r[field] || 0; });
        });
        return n;
      });
    };
  }
  // Frames decoded from every other member (tests and benchmark read it).
  Mesh.prototype.framesDecoded = counter("framesDecoded", "video");
  // Frames decoded from each other member: {peer: n} (tests).
  Mesh.prototype.framesByPeer = function () {
    var pcs = this.pcs, peers = Object.keys(pcs);
    return Promise.all(peers.map(function (p) { return pcs[p].getStats(); })).then(function (all) {
      var out = {};
      all.forEach(function (stats, i) {
        var n = 0;
        stats.forEach(function (r) { if (r.type === "inbound-rtp" && r.kind === "video") n += r.framesDecoded || 0; });
        out[peers[i]] = n;
      });
      return out;
    });
  };
  Mesh.prototype.audioPacketsSent = counter("packetsSent", "audio");

  function media() {
    var constraints = { audio: true, video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } } };
    return navigator.mediaDevices.getUserMedia(constraints).catch(function () {
      return navigator.mediaDevices.getUserMedia({ audio: true });
    });
  }

  function controls(mesh) {
    var facing = "user", screen = null;
    function camera() { return mesh.local.getVideoTracks()[0] || null; }
    function press(b, on, text) { b.setAttribute("aria-pressed", String(on)); b.textContent = text; }
    var mute = document.getElementById("visio-mute");
    if (mute) mute.addEventListener("click", function () {
      mesh.state.audio = !mesh.state.audio;
      var mic = mesh.local.getAudioTracks()[0] || null;
      if (mic) mic.enabled = mesh.state.audio;
      mesh.sendTrack("audio", mesh.state.audio ? mic : null);  // muted: no audio packet at all
      press(mute, !mesh.state.audio, mesh.state.audio ? "Couper le micro" : "Rétablir le micro");
      mesh.tell();
    });
    var cam = document.getElementById("visio-camera");
    if (cam) cam.addEventListener("click", function () {
      mesh.state.video = !mesh.state.video;
      var c = camera();
      if (c) c.enabled = mesh.state.video;
      if (!screen) mesh.sendTrack("video", mesh.state.video ? c : null);
      press(cam, !mesh.state.video, mesh.state.video ? "Couper la caméra" : "Rétablir la caméra");
      var me = $(".visio-tile.me"); if (me) me.classList.toggle("camera-off", !mesh.state.video);
      if (!screen) mesh.tell();
    });
    var share = document.getElementById("visio-screen");
    if (share && !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia)) share.hidden = true;
    function unshare() {
      if (!screen) return;
      screen.onended = null; screen.stop(); screen = null; mesh.sharing = false;
      mesh.sendTrack("video", mesh.state.video ? camera() : null);
      press(share, false, "Partager l'écran");
      mesh.tell();
    }
    if (share) share.addEventListener("click", function () {
      if (screen) { unshare(); return; }
      navigator.mediaDevices.getDisplayMedia({ video: true }).then(function (s) {
        screen = s.getVideoTracks()[0];
        screen.onended = unshare;
        mesh.sendTrack("video", screen);  // replaceTrack: no renegotiation, the others keep decoding
        press(share, true, "Arrêter le partage");
        mesh.sharing = true;
        mesh.tell();
      }).catch(function () { status("Partage d'écran refusé ou impossible."); });
    });
    window.monsisraScreen = function () { return screen; };
    var flip = document.getElementById("visio-flip");
    if (flip) flip.addEventListener("click", function () {
      facing = facing === "user" ? "environment" : "user";
      navigator.mediaDevices.getUserMedia({ video: { facingMode: facing } }).then(function (s) {
        var track = s.getVideoTracks()[0], old = camera();
        if (old) { mesh.local.removeTrack(old); old.stop(); }
        track.enabled = mesh.state.video;
        mesh.local.addTrack(track);
        if (!screen && mesh.state.video) mesh.sendTrack("video", track);
        var v = $("#visio-local"); if (v) v.srcObject = mesh.local;
      }).catch(function () { status("Impossible de changer de caméra"); });
    });
  }

  /* ---- a professional's call (conversation page, tele-expertise page or /visio/<call>) ------ */
  // start: when the call is started from this page (« Lancer une visio »), a function that creates
  // it and gives its id; the camera opens meanwhile and nothing reloads.
  function proCall(panel, start, failed) {
    var callId = start ? null : parseInt(panel.dataset.callId, 10), mesh = null, local = null, ended = false, early = [];
    function onEvent(e) {
      var ev = e.detail;
      if (!ev || !ev.call_id) return;
      if (!mesh) { if (ev.type === "call.signal") early.push(e); return; }
      if (ev.call_id !== callId) return;
      if (ev.type === "call.signal") mesh.onSignal(ev);
      else if (ev.type === "call.joined") { mesh.names[ev.peer] = ev.name; status(ev.name + " a rejoint la visio"); }
      else if (ev.type === "call.left") { mesh.drop(ev.peer); status(ev.name + " a quitté la visio"); }
      else if (ev.type === "call.declined") status(ev.name + " a refusé l'appel");
      else if (ev.type === "call.ended") finish("La visio est terminée.");
      else if (ev.type === "call.error") status(ev.detail);
    }
    function finish(text) {
      if (ended) return;
      ended = true;
      if (mesh) mesh.close(); else if (local) local.getTracks().forEach(function (t) { t.stop(); });
      status(text);
      panel.classList.add("ended");
    }
    document.addEventListener("monsisra:event", onEvent);
    function live() {
      return new Promise(function (resolve) {
        if (window.MonSisraLive && window.MonSisraLive.open()) resolve();
        else document.addEventListener("monsisra:open", function () { resolve(); }, { once: true });
      });
    }
    // The camera opens while the call is created and joined; the offers do not wait for it.
    media().then(function (s) {
      if (ended) { s.getTracks().forEach(function (t) { t.stop(); }); return; }
      mark("media");
      local = s;
      if (mesh) mesh.setMedia(s); else $("#visio-local").srcObject = s;
    }, function () { status("Caméra et micro inaccessibles : les autres ne vous voient ni ne vous entendent."); });
    (start ? start() : Promise.resolve(callId)).then(function (id) {
      callId = id;
      panel.dataset.callId = id;
      mark("started");
      return live();
    }).then(function () {
      mark("live");
      // After the socket is open: an offer from someone joining right after us cannot be missed.
      return api("POST", "/api/v1/calls/" + callId + "/join");
    }).then(function (info) {
      if (ended) return;
      mark("joined");
      mesh = new Mesh({ send: window.MonSisraLive.send, callId: callId, peer: info.peer, iceServers: info.ice_servers,
                        relay: panel.dataset.ice === "relay" });
      if (local) mesh.setMedia(local);
      window.monsisraCall = mesh;
      controls(mesh);
      status(info.members.length ? "Connexion…" : "En attente des autres participants…");
      info.members.forEach(function (m) { mesh.offer(m.peer, m.name); });
      early.splice(0).forEach(onEvent);  // offers that came before the join's answer
    }).catch(function (err) {
      if (failed && callId === null) { ended = true; if (local) local.getTracks().forEach(function (t) { t.stop(); }); failed(err); }
      else finish(err.message || "Visio impossible");
    });
    $("#visio-hangup", panel).addEventListener("click", function () {
      if (callId === null) { location.href = panel.dataset.back || location.pathname; return; }
      api("POST", "/api/v1/calls/" + callId + "/leave").finally(function () {
        finish("Vous avez quitté la visio.");
        location.href = panel.dataset.back || "/conversations";
      });
    });
    window.addEventListener("pagehide", function () {
      if (ended || callId === null) return;
      fetch("/api/v1/calls/" + callId + "/leave", { method: "POST", keepalive: true, credentials: "same-origin",
                                                     headers: { "X-CSRF-Token": CSRF } });
    });
  }

  // The call panel, as video/_panel.html renders it.
  function buildPanel(relay, back) {
    var panel = document.createElement("section");
    panel.className = "visio"; panel.id = "visio"; panel.setAttribute("aria-label", "Visio");
    panel.dataset.ice = relay ? "relay" : ""; panel.dataset.back = back;
    panel.innerHTML = '<p class="visio-status" id="visio-status" role="status" aria-live="polite">Lancement de la visio…</p>' +
      '<div class="visio-grid" id="visio-grid"><figure class="visio-tile me"><video id="visio-local" autoplay playsinline muted></video>' +
      '<p class="visio-off">Caméra coupée</p><figcaption>Vous</figcaption></figure></div>' +
      '<div class="visio-controls" role="toolbar" aria-label="Commandes de la visio">' +
      '<button type="button" class="btn" id="visio-mute" aria-pressed="false">Couper le micro</button>' +
      '<button type="button" class="btn" id="visio-camera" aria-pressed="false">Couper la caméra</button>' +
      '<button type="button" class="btn" id="visio-screen" aria-pressed="false">Partager l\'écran</button>' +
      '<button type="button" class="btn" id="visio-flip">Changer de caméra</button>' +
      '<button type="button" class="btn danger" id="visio-hangup">Raccrocher</button></div>';
    return panel;
  }

  /* ---- « Lancer une visio » (conversation or tele-expertise): the call starts in the page ---- */
  function launcher(btn) {
    btn.addEventListener("click", function () {
      if ($("#visio")) return;
      btn.disabled = true;
      if (window.Notification && Notification.permission === "default") Notification.requestPermission();
      var conv = btn.dataset.conversationId;
      var url = btn.dataset.callsUrl || "/api/v1/conversations/" + conv + "/calls";
      var relay = new URLSearchParams(location.search).get("ice") === "relay";
      var panel = buildPanel(relay, btn.dataset.back || location.pathname);
      var anchor = btn.closest(".chat-head") || btn.closest("[data-visio-slot]") || btn.parentElement;
      anchor.insertAdjacentElement("afterend", panel);
      btn.hidden = true;
      document.body.classList.add("in-call");
      proCall(panel, function () {
        return api("POST", url).then(function (call) {
          if (conv) history.replaceState(null, "", location.pathname + "?visio=" + call.id + (relay ? "&ice=relay" : ""));
          return call.id;
        });
      }, function (err) {
        panel.remove();
        btn.hidden = false; btn.disabled = false;
        document.body.classList.remove("in-call");
        var e = $("#chat-error") || $("#visio-error");
        if (e) { e.textContent = err.message; e.hidden = false; } else alert(err.message);
      });
    });
  }

  /* ---- teleconsultations list ------------------------------------------------------------ */
  function teleList(root) {
    function render(items) {
      var list = $("#tc-list");
      list.textContent = "";
      if (!items.length) {
        var li0 = document.createElement("li"); li0.className = "muted tc-empty";
        li0.textContent = "Aucune téléconsultation à venir."; list.appendChild(li0);
      }
      items.forEach(function (t) {
        var li = document.createElement("li");
        li.className = "tc-item" + (t.waiting ? " waiting" : ""); li.dataset.id = t.id;
        var n = document.createElement("span"); n.className = "tc-name";
        n.textContent = t.patient.given_names + " " + t.patient.family_name.toUpperCase();
        var at = document.createElement("span"); at.className = "tc-at";
        at.textContent = new Date(t.at).toLocaleString("fr-FR", { dateStyle: "short", timeStyle: "short" });
        var st = document.createElement("span"); st.className = "tc-state";
        st.textContent = t.waiting ? "En salle d'attente" : t.state === "admitted" ? "En consultation" : "Pas encore arrivé";
        li.append(n, at, st);
        if (t.waiting || t.state === "admitted") {
          var b = document.createElement("button");
          b.type = "button"; b.className = "btn primary small tc-admit"; b.dataset.id = t.id; b.textContent = "Faire entrer";
          li.appendChild(b);
        }
        list.appendChild(li);
      });
    }
    function refresh() { api("GET", "/api/v1/teleconsultations").then(function (d) { render(d.items); }); }
    document.querySelectorAll(".tc-at[data-at]").forEach(function (s) {
      s.textContent = new Date(s.dataset.at).toLocaleString("fr-FR", { dateStyle: "short", timeStyle: "short" });
    });
    document.addEventListener("monsisra:event", function (e) {
      var t = e.detail.type;
      if (t === "teleconsultation.waiting" || t === "teleconsultation.ended") refresh();
    });
    document.addEventListener("monsisra:open", refresh);
    root.addEventListener("click", function (e) {
      var b = e.target.closest(".tc-admit");
      if (!b) return;
      b.disabled = true;
      api("POST", "/api/v1/teleconsultations/" + b.dataset.id + "/admit").then(function (r) {
        location.href = r.url + location.search;
      }).catch(function (err) { b.disabled = false; alert(err.message); });
    });
    $("#tc-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var f = e.target, err = $("#tc-error");
      var at = f.at.value ? new Date(f.at.value).toISOString() : "";
      api("POST", "/api/v1/teleconsultations", { patient: { family_name: f.family_name.value,
        given_names: f.given_names.value, email: f.email.value || null, phone: f.phone.value || null }, at: at })
        .then(function (r) {
          err.hidden = true;
          $("#tc-created").hidden = false;
          $("#tc-created-text").textContent = r.sent_by_email ? "Le lien a été envoyé par e-mail au patient."
            : "Copiez ce texte dans un SMS au patient :";
          $("#tc-link").value = r.sent_by_email ? r.patient_link : r.sms_text;
          f.reset();
          refresh();
        }).catch(function (x) { err.textContent = x.message; err.hidden = false; });
    });
  }

  /* ---- the patient's side ------------------------------------------------------------------ */
  function patientRoom(root) {
    var secret = root.dataset.secret, local = null, mesh = null, socket = null, call = null, meterTimer = null;
    var base = "/api/v1/patient/teleconsultation/" + secret;
    function test() {
      if (local) return Promise.resolve(local);
      return media().then(function (s) {
        local = s;
        $("#visio-local").srcObject = s;
        $("#test-status").textContent = s.getVideoTracks().length ? "Caméra et micro fonctionnent." : "Micro seul (pas de caméra).";
        try {
          var ctx = new (window.AudioContext || window.webkitAudioContext)(), an = ctx.createAnalyser();
          ctx.createMediaStreamSource(s).connect(an);
          var buf = new Uint8Array(an.fftSize);
          meterTimer = setInterval(function () {
            an.getByteTimeDomainData(buf);
            var peak = 0; for (var i = 0; i < buf.length; i++) peak = Math.max(peak, Math.abs(buf[i] - 128));
            $("#mic-level").value = peak / 128;
          }, 200);
        } catch (e) { /* no meter */ }
        return s;
      }).catch(function () {
        $("#test-status").textContent = "Caméra et micro inaccessibles : autorisez-les dans votre navigateur.";
        throw new Error("media");
      });
    }
    function admitted(info) {
      if (mesh || !info || !info.peer) return;
      call = info;
      mesh = new Mesh({ send: function (m) { socket.send(JSON.stringify(m)); }, callId: info.call_id, peer: info.peer,
                        iceServers: info.ice_servers, relay: root.dataset.ice === "relay" });
      if (local) mesh.setMedia(local);
      window.monsisraCall = mesh;
      $("#patient-controls").hidden = false;
      controls(mesh);
      status("Votre soignant vous fait entrer…");
    }
    function connect() {
      return new Promise(function (resolve) {
        socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "/events");
        socket.onopen = function () { resolve(); };
        socket.onmessage = function (e) {
          var ev; try { ev = JSON.parse(e.data); } catch (x) { return; }
          if (ev.type === "call.admitted") admitted(ev);
          else if (ev.type === "call.signal" && mesh) mesh.onSignal(ev);
          else if (ev.type === "call.ended") { if (mesh) mesh.close(); status("La consultation est terminée. Vous pouvez fermer cette page."); }
        };
        socket.onclose = function (e) { if (e.code === 4404) status(e.reason); };
      });
    }
    $("#patient-test-btn").addEventListener("click", function () { test().catch(function () {}); });
    $("#patient-wait").addEventListener("click", function () {
      var b = $("#patient-wait");
      b.disabled = true;
      test().then(connect).then(function () {
        return fetch(base + "/wait", { method: "POST", credentials: "same-origin" }).then(function (r) {
          return r.json().then(function (d) { if (!r.ok) throw new Error(d.detail); return d; });
        });
      }).then(function (state) {
        status("Vous êtes en salle d'attente : votre soignant va vous faire entrer.");
        if (state.call) admitted(state.call);
      }).catch(function (err) { b.disabled = false; status(err.message === "media" ? "" : err.message); });
    });
    window.addEventListener("pagehide", function () { if (meterTimer) clearInterval(meterTimer); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = $("#visio");
    if (panel) proCall(panel);
    document.querySelectorAll("#chat-visio, .visio-launch").forEach(launcher);
    var list = $("#teleconsultations");
    if (list) teleList(list);
    var room = $("#patient-room");
    if (room) patientRoom(room);
  });
})();
