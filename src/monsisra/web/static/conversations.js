/* MonSisra — conversations on every page: the live list, the « Conversations » badge and presence
   (the chat view itself is chat.js, loaded on its page only). Everything goes
   through the JSON API with the session cookie and the CSRF header; text is set with
   textContent only (never HTML). Live events come from app.js's socket ("monsisra:event"). */
(function () {
  "use strict";
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var CSRF = csrfMeta ? csrfMeta.content : "";

  function api(method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "X-CSRF-Token": CSRF } };
    if (body instanceof FormData) { opts.body = body; }
    else if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts).then(function (r) {
      if (r.status === 204) return null;
      return r.json().then(function (data) {
        if (!r.ok) { var e = new Error(data.detail || "Erreur"); e.status = r.status; throw e; }
        return data;
      });
    });
  }
  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }
  function time(iso) { return new Date(iso).toLocaleTimeString("fr-FR", { hour: "2-digit", minute: "2-digit" }); }
  function day(iso) {
    return new Date(iso).toLocaleDateString("fr-FR", { weekday: "long", day: "numeric", month: "long", year: "numeric" });
  }

  /* ---- the « Conversations » badge and the live list ---------------------------------- */
  function refreshBadge() {
    var badges = document.querySelectorAll("[data-conv-unread]");
    if (!badges.length) return;
    api("GET", "/api/v1/conversations?limit=1").then(function (d) {
      badges.forEach(function (b) { b.textContent = d.unread_total || ""; b.hidden = !d.unread_total; });
    }).catch(function () {});
  }
  var listTimer = null;
  function refreshList() {
    if (!$("#conv-liste") || !window.htmx) return;
    clearTimeout(listTimer);
    listTimer = setTimeout(function () {
      window.htmx.ajax("GET", "/conversations/liste", { target: "#conv-liste", swap: "outerHTML" });
    }, 100);
  }
  document.addEventListener("htmx:afterSwap", refreshBadge);
  document.addEventListener("monsisra:conv-badge", refreshBadge);

  /* ---- presence dots -------------------------------------------------------------------- */
  var LABELS = { online: "en ligne", away: "absent depuis un moment", offline: "hors ligne" };
  function showPresence(address, state) {
    document.querySelectorAll('.person[data-address="' + CSS.escape(address) + '"]').forEach(function (p) {
      var dot = $(".dot", p);
      if (dot) dot.className = "dot " + state;
      var label = $(".presence-label", p);
      if (label) label.textContent = " (" + LABELS[state] + ")";
      p.title = LABELS[state].charAt(0).toUpperCase() + LABELS[state].slice(1);
    });
  }
  // An answer asked before a live presence event but received after it is older than the event:
  // it does not overwrite what the event said.
  var presenceEvents = 0, presenceAt = {};
  function loadPresence(addresses) {
    if (!addresses.length) return;
    var q = addresses.map(function (a) { return "address=" + encodeURIComponent(a); }).join("&");
    var asked = presenceEvents;
    api("GET", "/api/v1/presence?" + q).then(function (d) {
      d.items.forEach(function (i) { if (!(presenceAt[i.address] > asked)) showPresence(i.address, i.state); });
    }).catch(function () {});
  }

  /* Presence tags anywhere (the address picker): [data-presence-address] gets a dot and a word. */
  function fillTags(root) {
    var tags = Array.prototype.slice.call((root || document).querySelectorAll("[data-presence-address]"));
    var addresses = tags.map(function (t) { return t.dataset.presenceAddress; }).filter(Boolean);
    if (!addresses.length) return;
    var q = addresses.slice(0, 100).map(function (a) { return "address=" + encodeURIComponent(a); }).join("&");
    api("GET", "/api/v1/presence?" + q).then(function (d) {
      d.items.forEach(function (i) { tagState(i.address, i.state); });
    }).catch(function () {});
  }
  function tagState(address, st) {
    document.querySelectorAll('[data-presence-address="' + CSS.escape(address) + '"]').forEach(function (t) {
      t.className = "presence-tag " + st;
      t.textContent = { online: "en ligne", away: "absent", offline: "hors ligne" }[st];
    });
  }
  window.monsisraPresence = { fill: fillTags };
  setInterval(function () {
    var open = document.querySelector("dialog[open] [data-presence-address]");
    if (open) fillTags(open.closest("dialog"));
  }, 30000);

  function init() {
    refreshBadge();
    document.addEventListener("monsisra:event", function (ev) {
      var t = ev.detail.type;
      if (t === "presence") {
        presenceEvents++;
        (ev.detail.addresses || []).forEach(function (a) {
          presenceAt[a] = presenceEvents;
          showPresence(a, ev.detail.state); tagState(a, ev.detail.state);
        });
      }
      if (t === "conversation.message" || t === "conversation.read" || t === "conversation.new" || t === "conversation.closed") {
        refreshBadge(); refreshList();
      }
    });
    var input = document.querySelector("[data-presence-input]"), preview = document.querySelector("[data-presence-preview]");
    if (input && preview) {
      input.addEventListener("change", function () {
        var addresses = input.value.split(/[,;\s]+/).filter(Boolean);
        if (!addresses.length) { preview.textContent = ""; return; }
        api("GET", "/api/v1/presence?" + addresses.map(function (a) { return "address=" + encodeURIComponent(a); }).join("&"))
          .then(function (d) {
            preview.textContent = d.items.map(function (i) { return i.address + " : " + i.label.toLowerCase(); }).join(" · ");
          }).catch(function () {});
      });
    }
  }
  // The chat page's script (chat.js, loaded there only) uses the same helpers.
  window.MonSisraConversations = { api: api, el: el, time: time, day: day, showPresence: showPresence,
                                   loadPresence: loadPresence };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
