/* MonSisra — an incoming visio (loaded by app.js at the first call event): a banner with
   Rejoindre / Refuser, a tone (WebAudio) for 30 s at most, and a system notification when allowed. */
(function () {
  "use strict";
  function $(sel) { return document.querySelector(sel); }
  var meta = $('meta[name="csrf-token"]');
  var CSRF = meta ? meta.content : "";
  var ringing = null;
  if (!$('link[href^="/static/video.css"]')) {  // the banner's style
    var css = document.createElement("link");
    css.rel = "stylesheet"; css.href = "/static/video.css";
    document.head.appendChild(css);
  }
  function stopRing(callId) {
    if (!ringing || (callId && ringing.callId !== callId)) return;
    clearInterval(ringing.timer);
    if (ringing.audio) ringing.audio.close();
    ringing.box.remove();
    ringing = null;
  }
  function beep(ctx) {
    [0, 0.4].forEach(function (at) {
      var osc = ctx.createOscillator(), gain = ctx.createGain();
      osc.frequency.value = 660; gain.gain.value = 0.08;
      osc.connect(gain); gain.connect(ctx.destination);
      osc.start(ctx.currentTime + at); osc.stop(ctx.currentTime + at + 0.25);
    });
  }
  function ring(ev) {
    var visio = $("#visio");
    if (visio && visio.dataset.callId === String(ev.call_id)) return;
    stopRing();
    var box = document.createElement("div");
    box.className = "ring"; box.id = "sonnerie"; box.setAttribute("role", "alertdialog");
    box.setAttribute("aria-label", "Appel en visio");
    var p = document.createElement("p");
    p.textContent = (ev.caller || "") + " vous appelle en visio" + (ev.title ? " — " + ev.title : "");
    var join = document.createElement("a");
    join.className = "btn primary"; join.textContent = "Rejoindre"; join.id = "sonnerie-rejoindre";
    join.href = ev.context === "conversation" ? "/conversations/" + ev.context_id + "?visio=" + ev.call_id
      : "/visio/" + ev.call_id;
    var no = document.createElement("button");
    no.type = "button"; no.className = "btn"; no.textContent = "Refuser";
    no.addEventListener("click", function () {
      fetch("/api/v1/calls/" + ev.call_id + "/decline", { method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": CSRF } });
      stopRing(ev.call_id);
    });
    box.append(p, join, no);
    document.body.appendChild(box);
    join.focus();
    var audio = null;
    try { audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (e) { audio = null; }
    ringing = { callId: ev.call_id, box: box, audio: audio, count: 0, timer: null };
    if (audio) beep(audio);
    ringing.timer = setInterval(function () {
      if (!ringing) return;
      if (++ringing.count > 15) { stopRing(); return; }
      if (ringing.audio) beep(ringing.audio);
    }, 2000);
    if (window.Notification && Notification.permission === "granted" && document.hidden) {
      try { new Notification("Visio MonSisra", { body: p.textContent, tag: "call-" + ev.call_id }); } catch (e) { /* */ }
    }
  }
  window.MonSisraRing = function (ev) {
    if (ev.type === "call.ring") ring(ev); else stopRing(ev.call_id);
  };
})();
