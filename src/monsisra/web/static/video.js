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

  function status(text) { var s = $("#visio-status"); if (s) s.textContent = text; }

  /* ---- the mesh ------------------------------------------------------------------------- */
  function Mesh(opts) {
    this.send = opts.send;           // function (message) on the live socket
    this.callId = opts.callId;
    this.peer = opts.peer;           // my signalling address
    this.config = { iceServers: opts.iceServers || [], iceTransportPolicy: opts.relay ? "relay" : "all" };
    this.local = opts.local;         // my MediaStream
    this.pcs = {};                   // peer -> RTCPeerConnection
    this.names = {};
    this.pending = {};               // peer -> candidates before the remote description
    this.signals = 0;                // signalling messages sent (benchmark)
    this.grid = $("#visio-grid");
  }
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
      fig.className = "visio-tile"; fig.id = id;
      var v = document.createElement("video");
      v.autoplay = true; v.playsInline = true;
      var cap = document.createElement("figcaption");
      cap.textContent = this.names[peer] || "Participant";
      fig.append(v, cap);
      this.grid.appendChild(fig);
    }
    return fig;
  };
  Mesh.prototype.connection = function (peer) {
    var self = this, pc = this.pcs[peer];
    if (pc) return pc;
    pc = new RTCPeerConnection(this.config);
    this.pcs[peer] = pc;
    this.local.getTracks().forEach(function (t) { pc.addTrack(t, self.local); });
    pc.onicecandidate = function (e) {
      if (e.candidate) self.post(peer, "candidate", { candidate: e.candidate.toJSON() });
    };
    pc.ontrack = function (e) {
      var fig = self.tile(peer);
      if (fig) { var v = $("video", fig); if (v.srcObject !== e.streams[0]) v.srcObject = e.streams[0]; }
    };
    pc.onconnectionstatechange = function () {
      if (pc.connectionState === "connected") status("En visio");
      if (pc.connectionState === "failed") status("Connexion impossible avec " + (self.names[peer] || "un participant"));
    };
    return pc;
  };
  Mesh.prototype.offer = function (peer, name) {
    var self = this, pc;
    this.names[peer] = name;
    pc = this.connection(peer);
    this.tile(peer);
    return pc.createOffer().then(function (o) { return pc.setLocalDescription(o); })
      .then(function () { self.post(peer, "offer", { sdp: pc.localDescription.sdp }); });
  };
  Mesh.prototype.flush = function (peer) {
    var pc = this.pcs[peer], list = this.pending[peer] || [];
    delete this.pending[peer];
    list.forEach(function (c) { pc.addIceCandidate(c).catch(function () { /* stale */ }); });
  };
  Mesh.prototype.onSignal = function (ev) {
    var self = this, pc;
    if (ev.call_id !== this.callId || ev.to !== this.peer) return;
    if (ev.kind === "offer") {
      pc = this.connection(ev.from);
      this.tile(ev.from);
      pc.setRemoteDescription({ type: "offer", sdp: ev.sdp })
        .then(function () { self.flush(ev.from); return pc.createAnswer(); })
        .then(function (a) { return pc.setLocalDescription(a); })
        .then(function () { self.post(ev.from, "answer", { sdp: pc.localDescription.sdp }); });
    } else if (ev.kind === "answer") {
      pc = this.pcs[ev.from];
      if (pc) pc.setRemoteDescription({ type: "answer", sdp: ev.sdp }).then(function () { self.flush(ev.from); });
    } else if (ev.kind === "candidate" && ev.candidate) {
      pc = this.pcs[ev.from];
      if (pc && pc.remoteDescription) pc.addIceCandidate(ev.candidate).catch(function () { /* stale */ });
      else (this.pending[ev.from] = this.pending[ev.from] || []).push(ev.candidate);
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
    this.local.getTracks().forEach(function (t) { t.stop(); });
  };
  Mesh.prototype.replaceVideo = function (track) {
    for (var p in this.pcs) {
      this.pcs[p].getSenders().forEach(function (s) { if (s.track && s.track.kind === "video") s.replaceTrack(track); });
    }
  };
  // Frames decoded from every other member (tests and benchmark read it).
  Mesh.prototype.framesDecoded = function () {
    var pcs = this.pcs;
    return Promise.all(Object.keys(pcs).map(function (p) { return pcs[p].getStats(); })).then(function (all) {
      var n = 0;
      all.forEach(function (stats) {
        stats.forEach(function (r) { if (r.type === "inbound-rtp" && r.kind === "video") n += r.framesDecoded || 0; });
      });
      return n;
    });
  };

  function media() {
    var constraints = { audio: true, video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } } };
    return navigator.mediaDevices.getUserMedia(constraints).catch(function () {
      return navigator.mediaDevices.getUserMedia({ audio: true });
    });
  }

  function controls(mesh) {
    var facing = "user", screen = null;
    function toggle(id, kind, on, off) {
      var b = document.getElementById(id);
      if (!b) return;
      b.addEventListener("click", function () {
        var tracks = kind === "audio" ? mesh.local.getAudioTracks() : mesh.local.getVideoTracks();
        var muted = b.getAttribute("aria-pressed") !== "true";
        tracks.forEach(function (t) { t.enabled = !muted; });
        b.setAttribute("aria-pressed", String(muted));
        b.textContent = muted ? on : off;
      });
    }
    toggle("visio-mute", "audio", "Rétablir le micro", "Couper le micro");
    toggle("visio-camera", "video", "Rétablir la caméra", "Couper la caméra");
    var share = document.getElementById("visio-screen");
    if (share && !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia)) share.hidden = true;
    if (share) share.addEventListener("click", function () {
      var camera = mesh.local.getVideoTracks()[0];
      if (screen) { screen.stop(); return; }
      navigator.mediaDevices.getDisplayMedia({ video: true }).then(function (s) {
        screen = s.getVideoTracks()[0];
        mesh.replaceVideo(screen);
        share.setAttribute("aria-pressed", "true"); share.textContent = "Arrêter le partage";
        screen.onended = function () {
          mesh.replaceVideo(camera); screen = null;
          share.setAttribute("aria-pressed", "false"); share.textContent = "Partager l'écran";
        };
        var _stop = screen.stop.bind(screen);
        screen.stop = function () { _stop(); screen.onended(); };
      }).catch(function () { /* refused */ });
    });
    var flip = document.getElementById("visio-flip");
    if (flip) flip.addEventListener("click", function () {
      facing = facing === "user" ? "environment" : "user";
      navigator.mediaDevices.getUserMedia({ video: { facingMode: facing } }).then(function (s) {
        var track = s.getVideoTracks()[0], old = mesh.local.getVideoTracks()[0];
        if (old) { mesh.local.removeTrack(old); old.stop(); }
        mesh.local.addTrack(track);
        mesh.replaceVideo(track);
        var v = $("#visio-local"); if (v) v.srcObject = mesh.local;
      }).catch(function () { status("Impossible de changer de caméra"); });
    });
  }

  /* ---- a professional's call (conversation page or /visio/<call>) -------------------------- */
  function proCall(panel) {
    var callId = parseInt(panel.dataset.callId, 10), mesh = null, local = null, ended = false, early = [];
    function onEvent(e) {
      var ev = e.detail;
      if (ev.call_id !== callId) return;
      if (!mesh) { if (ev.type === "call.signal") early.push(e); return; }
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
    // The camera opens while the socket connects and the call is joined (in parallel).
    var joined = live().then(function () { return api("POST", "/api/v1/calls/" + callId + "/join"); });
    Promise.all([media(), joined]).then(function (both) {
      var info = both[1];
      local = both[0];
      $("#visio-local").srcObject = local;
      mesh = new Mesh({ send: window.MonSisraLive.send, callId: callId, peer: info.peer, iceServers: info.ice_servers,
                        relay: panel.dataset.ice === "relay", local: local });
      window.monsisraCall = mesh;
      controls(mesh);
      status(info.members.length ? "Connexion…" : "En attente des autres participants…");
      info.members.forEach(function (m) { mesh.offer(m.peer, m.name); });
      early.splice(0).forEach(onEvent);  // offers that came while the camera was opening
    }).catch(function (err) { finish(err.message || "Visio impossible"); });
    $("#visio-hangup").addEventListener("click", function () {
      api("POST", "/api/v1/calls/" + callId + "/leave").finally(function () {
        finish("Vous avez quitté la visio.");
        location.href = panel.dataset.back || "/conversations";
      });
    });
    window.addEventListener("pagehide", function () {
      if (ended) return;
      fetch("/api/v1/calls/" + callId + "/leave", { method: "POST", keepalive: true, credentials: "same-origin",
                                                     headers: { "X-CSRF-Token": CSRF } });
    });
  }

  /* ---- « Lancer une visio » --------------------------------------------------------------- */
  function launcher(btn) {
    btn.addEventListener("click", function () {
      btn.disabled = true;
      if (window.Notification && Notification.permission === "default") Notification.requestPermission();
      var id = btn.dataset.conversationId;
      api("POST", "/api/v1/conversations/" + id + "/calls").then(function (call) {
        var relay = new URLSearchParams(location.search).get("ice") === "relay" ? "&ice=relay" : "";
        location.href = "/conversations/" + id + "?visio=" + call.id + relay;
      }).catch(function (err) {
        btn.disabled = false;
        var e = $("#chat-error"); if (e) { e.textContent = err.message; e.hidden = false; }
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
                        iceServers: info.ice_servers, relay: root.dataset.ice === "relay", local: local });
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
    var btn = $("#chat-visio");
    if (btn) launcher(btn);
    var list = $("#teleconsultations");
    if (list) teleList(list);
    var room = $("#patient-room");
    if (room) patientRoom(room);
  });
})();
