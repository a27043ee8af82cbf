/* MonSisra — the chat view of a conversation (bubbles, composer, photos, typing, « Vu par … »,
   earlier history on scroll). Loaded on the chat page only, after conversations.js whose helpers
   it uses; text is set with textContent only (never HTML). */
(function () {
  "use strict";
  var C = window.MonSisraConversations;
  if (!C) return;
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var api = C.api, el = C.el, time = C.time, day = C.day, loadPresence = C.loadPresence;
  function refreshBadge() { document.dispatchEvent(new CustomEvent("monsisra:conv-badge")); }

  /* ---- the chat ----------------------------------------------------------------------- */
  var chat = $("#chat");
  var state = null;
  function initChat() {
    var id = chat.dataset.conversationId, myBox = Number(chat.dataset.myMailbox);
    state = { id: Number(id), messages: [], ids: {}, cursor: null, loading: false, participants: [], lastTyping: 0 };
    var log = $("#chat-log"), list = $("#bubbles"), text = $("#composer-text"), errorBox = $("#chat-error");
    var base = "/api/v1/conversations/" + id;

    function fail(e) { errorBox.textContent = e.message || "L'action a échoué."; errorBox.hidden = false; }
    function ok() { errorBox.hidden = true; }
    function bubble(m) {
      var li = el("li", "bubble " + (m.kind !== "text" && m.kind !== "auto" ? "system" : m.author.mailbox_id === myBox ? "mine" : "theirs"));
      li.dataset.id = m.id;
      if (m.kind === "system") { li.appendChild(el("span", "text", m.body)); return li; }
      var meta = el("div", "meta");
      meta.appendChild(el("span", "author", m.author.name));
      var t = el("time", "at", time(m.created_at)); t.dateTime = m.created_at; meta.appendChild(t);
      li.appendChild(meta);
      if (m.body) li.appendChild(el("div", "text", m.body));
      (m.attachments || []).forEach(function (a) {
        var link = el("a", "attachment");
        link.href = "/api/v1/attachments/" + a.id + (a.thumbnail_id ? "?disposition=inline" : "");
        link.target = "_blank"; link.rel = "noopener";
        if (a.thumbnail_id) {
          var img = el("img", "photo"); img.src = "/api/v1/attachments/" + a.thumbnail_id + "?disposition=inline";
          img.alt = "Photo " + a.filename; link.appendChild(img);
        } else { link.textContent = "📎 " + a.filename; }
        li.appendChild(link);
      });
      return li;
    }
    function render() {
      var frag = document.createDocumentFragment(), lastDay = null;
      state.messages.forEach(function (m) {
        var d = day(m.created_at);
        if (d !== lastDay) { frag.appendChild(el("li", "day", d)); lastDay = d; }
        frag.appendChild(bubble(m));
      });
      list.replaceChildren(frag);
    }
    function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 80; }
    function toBottom() { log.scrollTop = log.scrollHeight; }
    function add(m, scroll) {
      if (state.ids[m.id]) return;
      state.ids[m.id] = true;
      state.messages.push(m);
      state.messages.sort(function (a, b) { return a.id - b.id; });
      var stick = scroll || atBottom();
      render();
      if (stick) toBottom();
    }
    function seen() {
      var last = state.messages.length ? state.messages[state.messages.length - 1] : null;
      var box = $("#chat-seen");
      if (!last || last.author.mailbox_id !== myBox) { box.textContent = ""; return; }
      var names = state.participants.filter(function (p) {
        return !p.left_at && p.mailbox_id !== myBox && (p.last_read_message_id || 0) >= last.id;
      }).map(function (p) { return p.last_read_by && p.kind !== "PER" ? p.last_read_by + " (" + p.name + ")" : p.name; });
      box.textContent = names.length ? "Vu par " + names.join(", ") : "";
    }
    function markRead() {
      if (document.visibilityState !== "visible") return;
      api("POST", base + "/read").then(refreshBadge).catch(function () {});
    }
    function load() {
      return api("GET", base + "?limit=30").then(function (c) {
        state.participants = c.participants;
        state.cursor = c.messages.next_cursor;
        c.messages.items.forEach(function (m) { state.ids[m.id] = true; state.messages.push(m); });
        state.messages.sort(function (a, b) { return a.id - b.id; });
        render(); toBottom(); seen(); markRead();
        loadPresence(c.participants.filter(function (p) { return !p.left_at; }).map(function (p) { return p.address; }));
        chat.dataset.ready = "1";
      }).catch(fail);
    }
    function older() {
      if (!state.cursor || state.loading) return;
      state.loading = true; $("#chat-more").hidden = false;
      var before = log.scrollHeight;
      api("GET", base + "?limit=30&cursor=" + encodeURIComponent(state.cursor)).then(function (c) {
        state.cursor = c.messages.next_cursor;
        c.messages.items.forEach(function (m) { if (!state.ids[m.id]) { state.ids[m.id] = true; state.messages.push(m); } });
        state.messages.sort(function (a, b) { return a.id - b.id; });
        render();
        log.scrollTop = log.scrollHeight - before;
      }).catch(fail).then(function () { state.loading = false; $("#chat-more").hidden = true; });
    }
    log.addEventListener("scroll", function () { if (log.scrollTop < 40) older(); });

    function send(body, attachments) {
      ok();
      return api("POST", base + "/messages", { body: body, attachments: attachments || [] }).then(function (m) {
        add(m, true); seen();
      });
    }
    $("#composer").addEventListener("submit", function (e) {
      e.preventDefault();
      var body = text.value.trim();
      if (!body) return;
      text.value = "";
      send(body).catch(function (err) { text.value = body; fail(err); });
    });
    text.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("#composer").requestSubmit();
      }
    });
    text.addEventListener("input", function () {
      var now = Date.now();
      if (now - state.lastTyping > 3000 && text.value) {
        state.lastTyping = now;
        api("POST", base + "/typing").catch(function () {});
      }
    });
    $("#photo").addEventListener("change", function () {
      var file = this.files && this.files[0];
      if (!file) return;
      var form = new FormData(); form.append("file", file);
      var input = this;
      api("POST", "/api/v1/attachments", form).then(function (a) {
        var body = text.value.trim(); text.value = "";
        return send(body, [a.id]);
      }).catch(fail).then(function () { input.value = ""; });
    });
    $("#chat-add").addEventListener("submit", function (e) {
      e.preventDefault();
      var input = $("#add-address");
      api("POST", base + "/participants", { participants: [input.value.trim()] }).then(function (c) {
        input.value = ""; ok(); state.participants = c.participants; location.reload();
      }).catch(fail);
    });
    $("#chat-leave").addEventListener("click", function () {
      if (!window.confirm("Quitter cette conversation ? Vous n'en recevrez plus les messages.")) return;
      api("POST", base + "/leave").then(function () { location.href = "/conversations"; }).catch(fail);
    });
    $("#chat-close").addEventListener("click", function () {
      if (!window.confirm("Clore la conversation ? Sa synthèse PDF sera envoyée à chaque participant.")) return;
      api("POST", base + "/close").then(function () { location.reload(); }).catch(fail);
    });

    var typingTimer = null;
    document.addEventListener("monsisra:event", function (ev) {
      var d = ev.detail;
      if (d.conversation_id !== state.id) return;
      if (d.type === "conversation.message") {
        add(d.message, false);
        $("#chat-typing").textContent = "";
        if (d.message.author.mailbox_id !== myBox) markRead();
        seen();
      } else if (d.type === "conversation.typing") {
        $("#chat-typing").textContent = d.name + " écrit…";
        clearTimeout(typingTimer);
        typingTimer = setTimeout(function () { $("#chat-typing").textContent = ""; }, 5000);
      } else if (d.type === "conversation.read") {
        state.participants.forEach(function (p) {
          if (p.mailbox_id === d.mailbox_id_read) { p.last_read_message_id = d.message_id; p.last_read_by = d.reader_name; }
        });
        seen();
      } else if (d.type === "conversation.closed") {
        location.reload();
      }
    });
    document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible") markRead(); });
    load();
  }

  if (!chat) return;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", initChat); else initChat();
})();
