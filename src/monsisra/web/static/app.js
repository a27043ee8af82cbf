/* MonSisra — the little JavaScript of the pages: live updates over the WebSocket, context
   menu, phone navigation, recipient picker, uploads by drag-and-drop, draft autosave.
   No framework, no build; htmx does the fragment swaps. No inline script anywhere (CSP). */
(function () {
  "use strict";
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
  var meta = $('meta[name="csrf-token"]');
  var CSRF = meta ? meta.content : "";

  function post(url, data) {
    var body = new FormData();
    Object.keys(data || {}).forEach(function (k) { body.append(k, data[k]); });
    body.append("csrf", CSRF);
    return fetch(url, { method: "POST", body: body, credentials: "same-origin",
                        headers: { "X-CSRF-Token": CSRF, "HX-Request": "true" } });
  }
  function debounce(fn, ms) {
    var t = null;
    var wrapped = function () { clearTimeout(t); t = setTimeout(fn, ms); };
    wrapped.cancel = function () { clearTimeout(t); };
    return wrapped;
  }
  function announce(text) {
    var el = $("#annonce");
    if (el) { el.textContent = ""; setTimeout(function () { el.textContent = text; }, 50); }
  }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "class") node.className = attrs[k]; else node.setAttribute(k, attrs[k]);
    });
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /* ---- tab title: unread count ------------------------------------------------------- */
  function updateTitle() {
    var nav = $("#dossiers");
    if (!nav) return;
    var n = parseInt(nav.dataset.unread || "0", 10);
    var base = document.title.replace(/^\(\d+\)\s*/, "");
    document.title = (n > 0 ? "(" + n + ") " : "") + base;
  }

  /* ---- inbox: refreshers ------------------------------------------------------------- */
  function refreshList() {
    var list = $("#liste");
    if (!list || !window.htmx) return;
    // Keep what the user sees: as many messages as are shown (pages loaded), and the scroll.
    var shown = Math.min(200, Math.max(50, $$(".messages .item", list).length));
    var top = list.scrollTop;
    return htmx.ajax("GET", list.dataset.url + "&n=" + shown, { target: "#liste", swap: "outerHTML" }).then(function () {
      var fresh = $("#liste");
      if (fresh) fresh.scrollTop = top;
      markSelected();
    });
  }
  function refreshCounts() {
    var nav = $("#dossiers");
    if (!nav || !window.htmx) return;
    return htmx.ajax("GET", nav.dataset.url, { target: "#dossiers", swap: "outerHTML" }).then(updateTitle);
  }
  // One refresh of a message's recipients at a time: a second event during a refresh asks for one
  // more afterwards (two outerHTML swaps in flight would drop the newer one into a detached node).
  var receiptRefresh = {};
  function refreshReceipts(messageId) {
    var state = receiptRefresh[messageId];
    if (state) { state.again = true; return; }
    var box = $('.receipts[data-message-id="' + messageId + '"]');
    if (!box || !window.htmx) return;
    receiptRefresh[messageId] = { again: false };
    var done = function () {
      var again = receiptRefresh[messageId] && receiptRefresh[messageId].again;
      delete receiptRefresh[messageId];
      if (again) refreshReceipts(messageId);
    };
    htmx.ajax("GET", box.dataset.url, { target: box, swap: "outerHTML" }).then(done, done);
  }
  function paneUrl(mailboxId, messageId, binned) {
    // A message sent to oneself has two copies here: from the bin, open the one in the bin.
    return "/message/" + mailboxId + "/" + messageId + (binned ? "?corbeille=1" : "");
  }
  function refreshPane(mailboxId, messageId, binned) {
    // Moved to or out of the bin from another page: the open pane shows it at once.
    var open = $("#message");
    if (open && window.htmx && open.dataset.id === String(messageId) && open.dataset.mb === String(mailboxId)) {
      htmx.ajax("GET", paneUrl(mailboxId, messageId, binned), { target: "#lecture" });
    }
  }
  // One refresh of a part at a time, for the same reason: a slow answer swapped in after a newer
  // one would put the list back as it was (a deleted message shown again).
  function oneAtATime(run) {
    var busy = false, again = false;
    function go() {
      if (busy) { again = true; return; }
      busy = true; again = false;
      var done = function () { busy = false; if (again) go(); };
      var p = run();
      if (p && p.then) p.then(done, done); else done();
    }
    return go;
  }
  window.MonSisraOneAtATime = oneAtATime;  // for the pages' own scripts (teleexpertise.js)
  var listSoon = debounce(oneAtATime(refreshList), 150);
  var countsSoon = debounce(oneAtATime(refreshCounts), 150);
  document.body.addEventListener("monsisra:refresh", function () { listSoon(); });

  function markSelected() {
    var msg = $("#message");
    $$(".messages .item.selected").forEach(function (li) { li.classList.remove("selected"); });
    if (!msg) return;
    var li = $('.messages .item[data-id="' + msg.dataset.id + '"][data-mb="' + msg.dataset.mb + '"]');
    if (li) { li.classList.add("selected"); li.classList.remove("unread"); }
  }

  /* ---- live events ------------------------------------------------------------------- */
  var socket = null, retry = 1000, pinger = null, outbox = [];
  // Page scripts send on the live socket (video.js: WebRTC signalling), queued until it is open.
  window.MonSisraLive = {
    send: function (obj) {
      var text = JSON.stringify(obj);
      if (socket && socket.readyState === 1) socket.send(text); else outbox.push(text);
    },
    open: function () { return !!socket && socket.readyState === 1; }
  };
  function inScope(mailboxId) {
    var list = $("#liste");
    if (!list || !list.dataset.mbs) return false;
    return list.dataset.mbs.split(",").indexOf(String(mailboxId)) >= 0;
  }
  var me = null;  // the account, from the socket's "hello"
  // The care-team icon of a patient, wherever the page shows it, when the user joins or leaves the
  // team in another tab or device.
  // A fragment rendered before an event but swapped in after it (a list refresh in flight) would
  // show the old state: the states announced since the socket opened are applied to every swap.
  var careTeamKnown = {};
  function setCareTeamIcons(patientId, member, root) {
    var label = member ? "Vous êtes acteur de la prise en charge" : "Vous ne suivez pas ce patient";
    $$('.ct-icon[data-ct-patient="' + patientId + '"]', root).forEach(function (icon) {
      icon.classList.toggle("on", member);
      icon.classList.toggle("off", !member);
      icon.setAttribute("aria-label", label);
      icon.title = label;
    });
  }
  function careTeamIcons(ev) {
    if (me === null || ev.account_id !== me) return;
    careTeamKnown[ev.patient_id] = !!ev.member;
    setCareTeamIcons(ev.patient_id, !!ev.member);
  }
  function reapplyCareTeam() {
    Object.keys(careTeamKnown).forEach(function (pid) { setCareTeamIcons(pid, careTeamKnown[pid]); });
  }
  document.addEventListener("htmx:afterSwap", reapplyCareTeam);
  document.addEventListener("monsisra:swapped", reapplyCareTeam);  // parts swapped by page scripts
  function onEvent(ev) {
    if (ev.type === "hello") me = ev.account_id;
    else if (ev.type === "patient.care_team") careTeamIcons(ev);
    // Other page scripts (accounts.js: a delegation taken back) follow the same feed.
    document.dispatchEvent(new CustomEvent("monsisra:event", { detail: ev }));
    if (ev.type === "message.new") {
      if (inScope(ev.mailbox_id)) listSoon();
      announce("Nouveau message de " + (ev.sender || "") + " : " + (ev.subject || ""));
    } else if (ev.type === "message.stored" || ev.type === "message.flags") {
      if (inScope(ev.mailbox_id)) listSoon();
      if (ev.flags && "deleted" in ev.flags) refreshPane(ev.mailbox_id, ev.message_id, ev.flags.deleted);
    } else if (ev.type === "call.ring" || ev.type === "call.stop_ringing" || ev.type === "call.ended") {
      ringEvent(ev);
    } else if (ev.type === "counts") {
      countsSoon();
    } else if (ev.type === "message.read" || ev.type === "message.delivery") {
      // A reader, or what the other operator's server answered: the recipients' states change.
      refreshReceipts(ev.message_id);
    }
  }
  // « Lancer une visio » elsewhere: ring.js (loaded at the first call) shows and sounds the ring.
  var ringQueue = null;
  function ringEvent(ev) {
    if (window.MonSisraRing) { window.MonSisraRing(ev); return; }
    if (ringQueue) { ringQueue.push(ev); return; }
    ringQueue = [ev];
    var s = document.createElement("script");
    s.src = "/static/ring.js";
    s.onload = function () { ringQueue.splice(0).forEach(window.MonSisraRing); };
    document.head.appendChild(s);
  }
  // Presence: "active" at most once a minute while the user types or clicks (idle after 10 min).
  var lastActive = 0;
  ["keydown", "pointerdown", "focus"].forEach(function (type) {
    window.addEventListener(type, function () {
      var now = Date.now();
      if (now - lastActive > 60000 && socket && socket.readyState === 1) { lastActive = now; socket.send("active"); }
    }, true);
  });
  function connect() {
    if (!$("#dossiers") && !$(".receipts") && !$("#chat") && !$("[data-conversations-list]") &&
        !$("[data-live-page]")) return;
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/v1/events";
    socket = new WebSocket(url);
    socket.onopen = function () {
      retry = 1000;
      document.body.dataset.live = "1";
      // A receipt may have come between the page's rendering and this connection.
      $$(".receipts").forEach(function (b) { refreshReceipts(b.dataset.messageId); });
      clearInterval(pinger);
      pinger = setInterval(function () { if (socket.readyState === 1) socket.send("ping"); }, 30000);
      while (outbox.length) socket.send(outbox.shift());
      document.dispatchEvent(new CustomEvent("monsisra:open"));
    };
    socket.onmessage = function (e) {
      try { onEvent(JSON.parse(e.data)); } catch (err) { /* ignore malformed */ }
    };
    socket.onclose = function () {
      document.body.dataset.live = "0";
      careTeamKnown = {};  // events may be missed from now on: the server's pages are the truth
      clearInterval(pinger);
      // Events may have been missed while away: resync, then reconnect with backoff.
      setTimeout(function () { countsSoon(); listSoon(); connect(); }, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }

  /* ---- context menu on the list ------------------------------------------------------ */
  var menu = null, menuItem = null;
  var LABELS = {
    archived: ["Archiver", "Désarchiver"], read: ["Marquer comme lu", "Marquer comme non lu"],
    favorite: ["Ajouter aux favoris", "Retirer des favoris"], todo: ["À traiter", "Ne plus traiter"],
    deleted: ["Supprimer", "Restaurer"]
  };
  var DONE = { deleted: ["Message placé dans la corbeille.", "Message restauré."] };
  function hasFlag(li, key) { return (li.dataset.flags || "").split(" ").indexOf(key) >= 0; }
  function closeMenu(restoreFocus) {
    if (!menu || menu.hidden) return;
    menu.hidden = true;
    if (restoreFocus && menuItem) { var a = $(".item-link", menuItem); if (a) a.focus(); }
  }
  function openMenu(li, x, y) {
    menu = $("#menu-contextuel");
    if (!menu) return;
    menuItem = li;
    $$("button", menu).forEach(function (b) {
      var key = b.dataset.action;
      if (LABELS[key]) b.textContent = LABELS[key][hasFlag(li, key) ? 1 : 0];
      var binned = hasFlag(li, "deleted");
      // In the bin a message only opens (read-only) or goes back where it was.
      b.hidden = (binned && key !== "open" && key !== "deleted") ||
                 (key === "read" && li.dataset.role !== "in") || (key === "open" && li.dataset.role === "draft" && !binned);
    });
    menu.hidden = false;
    var w = menu.offsetWidth, h = menu.offsetHeight;
    menu.style.left = Math.max(4, Math.min(x, window.innerWidth - w - 4)) + "px";
    menu.style.top = Math.max(4, Math.min(y, window.innerHeight - h - 4)) + "px";
    var first = $$("button", menu).filter(function (b) { return !b.hidden; })[0];
    if (first) first.focus();
  }
  document.addEventListener("contextmenu", function (e) {
    var li = e.target.closest && e.target.closest(".messages .item");
    if (!li) return;
    e.preventDefault();
    var x = e.clientX, y = e.clientY;
    if (!x && !y) { var r = li.getBoundingClientRect(); x = r.left + 24; y = r.top + r.height / 2; }
    openMenu(li, x, y);
  });
  document.addEventListener("click", function (e) {
    if (menu && !menu.hidden && !e.target.closest("#menu-contextuel")) closeMenu(false);
    var b = e.target.closest && e.target.closest("#menu-contextuel button");
    if (!b || !menuItem) return;
    var li = menuItem, key = b.dataset.action;
    closeMenu(true);
    if (key === "open") { var a = $(".item-link", li); if (a) a.click(); return; }
    act(li, key, b.textContent);
  });
  function act(li, key, label) {
    var data = { role: li.dataset.role };
    var on = !hasFlag(li, key);
    data[key] = on ? "1" : "0";
    if ((key === "archived" && on) || key === "deleted") li.classList.add("leaving");
    post("/message/" + li.dataset.mb + "/" + li.dataset.id + "/etat", data).then(function (r) {
      if (!r.ok) { li.classList.remove("leaving"); announce("L'action a échoué."); return; }
      announce(DONE[key] ? DONE[key][on ? 0 : 1] : label + " : fait.");
      if (key === "deleted") {
        // Focus moves on to the next message rather than getting lost with the removed one.
        var next = li.nextElementSibling || li.previousElementSibling;
        var link = next && $(".item-link", next);
        if (link) link.focus();
      }
      listSoon();
      refreshPane(li.dataset.mb, li.dataset.id, key === "deleted" && on);
    }).catch(function () { li.classList.remove("leaving"); announce("L'action a échoué (hors ligne)."); });
  }
  // Arrow keys move between the messages of the list.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Delete") return;
    var cur = e.target.closest && e.target.closest(".messages .item-link");
    if (!cur || (menu && !menu.hidden)) return;
    var li = cur.closest(".item");
    if (hasFlag(li, "deleted")) return;  // restoring is explicit (menu or pane), never a stray key
    e.preventDefault();
    act(li, "deleted", "Supprimer");
  });
  document.addEventListener("keydown", function (e) {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    var cur = e.target.closest && e.target.closest(".messages .item-link");
    if (!cur || (menu && !menu.hidden)) return;
    var links = $$(".messages .item-link");
    var next = links[links.indexOf(cur) + (e.key === "ArrowDown" ? 1 : -1)];
    if (next) { e.preventDefault(); next.focus(); }
  });
  document.addEventListener("keydown", function (e) {
    if (!menu || menu.hidden) return;
    var items = $$("button", menu).filter(function (b) { return !b.hidden; });
    var i = items.indexOf(document.activeElement);
    if (e.key === "Escape") { e.preventDefault(); closeMenu(true); }
    else if (e.key === "ArrowDown") { e.preventDefault(); items[(i + 1) % items.length].focus(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); items[(i - 1 + items.length) % items.length].focus(); }
    else if (e.key === "Tab") { closeMenu(false); }
  });

  /* ---- skip link: focus lands on the target (a hash change would also reload the inbox) */
  document.addEventListener("click", function (e) {
    var skip = e.target.closest && e.target.closest("a.skip");
    if (!skip) return;
    var target = document.querySelector(skip.getAttribute("href"));
    if (!target) return;
    e.preventDefault();
    if (!target.hasAttribute("tabindex")) target.setAttribute("tabindex", "-1");
    target.focus();
  });

  /* ---- writing: remember the page to come back to after sending ------------------------ */
  function withReturn(link) {
    var url = new URL(link.href, location.href);
    if (url.origin !== location.origin || url.pathname !== "/ecrire" || url.searchParams.has("retour")) return;
    var here = location.pathname === "/ecrire" ? ($("#retour") ? $("#retour").value : "")
                                               : location.pathname + location.search;
    if (here) { url.searchParams.set("retour", here); link.href = url.pathname + url.search; }
  }
  ["click", "auxclick", "contextmenu"].forEach(function (type) {
    document.addEventListener(type, function (e) {
      var link = e.target.closest && e.target.closest('a[href^="/ecrire"]');
      if (link) withReturn(link);
    }, true);
  });

  /* ---- confirmations ("Message envoyé à …"): announced, dismissable -------------------- */
  var flash = $("#confirmation");
  if (flash) {
    var flashText = $(".flash-text", flash);
    var said = flashText.textContent;
    // Content present at load is not read out: put it back once the page is there.
    flashText.textContent = "";
    setTimeout(function () { flashText.textContent = said; }, 100);
    $(".flash-close", flash).addEventListener("click", function () {
      flash.remove();
      var main = $("#contenu");
      if (main) main.focus({ preventScroll: true });
    });
  }

  /* ---- inbox: navigation ------------------------------------------------------------- */
  document.addEventListener("click", function (e) {
    var t = e.target.closest && e.target.closest(".folders-toggle");
    if (t) {
      var open = $("#colonne").classList.toggle("open");
      t.setAttribute("aria-expanded", open ? "true" : "false");
      return;
    }
    var link = e.target.closest && e.target.closest(".messages .item-link[data-pane]");
    if (link && window.htmx && !e.ctrlKey && !e.metaKey && !e.shiftKey && e.button === 0) {
      // Open in the reading pane; the link itself (full page) is the no-JS fallback.
      e.preventDefault();
      var li = link.closest(".item");
      $$(".messages .item.selected").forEach(function (x) { x.classList.remove("selected"); });
      li.classList.add("selected");
      li.classList.remove("unread");
      htmx.ajax("GET", li.dataset.paneUrl || paneUrl(li.dataset.mb, li.dataset.id), { target: "#lecture" }).then(function () {
        history.pushState({}, "", link.getAttribute("href"));
      });
    }
    var inThread = e.target.closest && e.target.closest("a[data-thread-open]");
    if (inThread && window.htmx && !e.ctrlKey && !e.metaKey && e.button === 0) {
      e.preventDefault();
      htmx.ajax("GET", inThread.dataset.threadOpen, { target: "#lecture" });
      return;
    }
    var back = e.target.closest && e.target.closest("[data-back]");
    if (back && document.body.classList.contains("inbox-page")) {
      e.preventDefault();
      document.body.classList.remove("lecture-ouverte");
      var sel = $(".messages .item.selected .item-link");
      if (sel) sel.focus();
    }
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    var target = e.detail.target;
    if (target && target.id === "lecture") {
      document.body.classList.add("lecture-ouverte");
      target.focus({ preventScroll: true });
      markSelected();
    }
    if (target && (target.id === "liste" || (target.closest && target.closest("#liste")))) markSelected();
    if (target && target.id === "dossiers") updateTitle();
  });
  document.addEventListener("htmx:afterSettle", function () { markSelected(); });
  window.addEventListener("popstate", function (e) {
    if (!(e.state && e.state.htmx) && document.body.classList.contains("inbox-page")) location.reload();
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    // "Message introuvable" (404) is an answer to show in the reading pane, not a failure.
    var xhr = e.detail.xhr;
    if (xhr.status === 404 && e.detail.target && e.detail.target.id === "lecture" &&
        (xhr.getResponseHeader("content-type") || "").indexOf("text/html") === 0) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
  document.addEventListener("htmx:responseError", function (e) {
    announce("Erreur " + e.detail.xhr.status + " : l'action n'a pas abouti.");
  });

  /* ---- compose: recipients ----------------------------------------------------------- */
  function chip(field, address, name) {
    var c = el("span", { "class": "chip", "data-address": address });
    c.appendChild(el("input", { type: "hidden", name: field, value: address }));
    c.appendChild(el("input", { type: "hidden", name: field + "_name", value: name || "" }));
    c.appendChild(el("span", { "class": "chip-label", title: address }, name || address));
    c.appendChild(el("button", { type: "button", "class": "chip-remove", "aria-label": "Retirer " + (name || address) }, "×"));
    return c;
  }
  function addRecipient(address, name) {
    var box = $("#to-chips");
    if (!box || $('.chip[data-address="' + CSS.escape(address) + '"]', box)) return;
    box.appendChild(chip("to", address, name));
    autosaveSoon();
  }
  document.addEventListener("click", function (e) {
    var rm = e.target.closest && e.target.closest(".chip-remove");
    if (rm) { rm.closest(".chip").remove(); autosaveSoon(); refreshSendState(); }
  });

  /* ---- the directory picker ---------------------------------------------------------- */
  var picker = $("#picker");
  var chosen = new Map();
  var search = { q: "", where: "", kind: "all", next: {} };
  function pickerKind() { var r = $('input[name="picker-kind"]:checked', picker); return r ? r.value : "all"; }
  function updateCount() {
    var n = chosen.size;
    $("#picker-count").textContent = n ? n + " destinataire" + (n > 1 ? "s" : "") + " sélectionné" + (n > 1 ? "s" : "")
                                        : "Aucun destinataire sélectionné";
  }
  function entryNode(entry, section) {
    var li = el("li", { "class": "entry" });
    var label = el("label");
    var box = el("input", { type: "checkbox", value: entry.address || "" });
    box.dataset.name = entry.name || "";
    // The name and what kind of entry it is name the box (« Dr Bruno PETIT, expert »); the rest
    // describes it. Visible tags are only pictures of those words.
    var kinds = [[entry.is_expert, "Expert", "expert"], [entry.is_resource_team, "Équipe ressource", "équipe ressource"]]
      .filter(function (t) { return t[0]; });
    var uid = "entry-" + (++entrySeq);
    box.setAttribute("aria-label", [entry.name || entry.address || ""].concat(kinds.map(function (t) { return t[2]; }))
                                     .join(", "));
    box.setAttribute("aria-describedby", uid + "-sub " + uid + "-addr " + uid + "-act");
    box.checked = chosen.has(entry.address);
    if (!entry.address) box.disabled = true;
    label.appendChild(box);
    var dot = el("span", { "class": "dot " + (entry.active ? "active" : "inactive"),
                           title: entry.active ? "Messagerie utilisée récemment" : "Pas d'activité récente" });
    label.appendChild(dot);
    var text = el("span", { "class": "entry-text" });
    var nameLine = el("span", { "class": "entry-name" }, entry.name || entry.address);
    kinds.forEach(function (t) {
      nameLine.appendChild(document.createTextNode(" "));  // read as two words, never « PETITExpert »
      nameLine.appendChild(el("span", { "class": "tag" }, t[1]));
    });
    if (entry.address) {
      // Presence (en ligne / absent / hors ligne), filled and kept live by conversations.js.
      nameLine.appendChild(document.createTextNode(" "));
      nameLine.appendChild(el("span", { "class": "presence-tag", "data-presence-address": entry.address }));
    }
    text.appendChild(nameLine);
    var details = [entry.profession, entry.specialty].filter(Boolean).join(" · ");
    var place = [entry.commune, entry.postcode ? "(" + entry.postcode + ")" : "",
                 entry.distance_km != null ? "à " + Math.round(entry.distance_km) + " km" : ""].filter(Boolean).join(" ");
    text.appendChild(el("span", { "class": "entry-sub", id: uid + "-sub" }, [details, place].filter(Boolean).join(" — ")));
    text.appendChild(el("span", { "class": "entry-addr muted", id: uid + "-addr" }, entry.address || "pas de messagerie"));
    label.appendChild(text);
    label.appendChild(el("span", { "class": "sr-only", id: uid + "-act" }, entry.active ? " (actif)" : " (inactif)"));
    li.appendChild(label);
    if (entry.is_expert && entry.address) {
      // An expert's card (its description) and the tele-expertise request form, addressed to it.
      li.appendChild(el("a", { "class": "entry-support", href: "/teleexpertises/expert?adresse=" + encodeURIComponent(entry.address) },
                        "Fiche d'expertise"));
    }
    if (entry.is_resource_team && entry.address) {
      // A resource team's card offers the support request form, addressed to it.
      li.appendChild(el("a", { "class": "entry-support", href: "/appui/nouvelle?equipe=" + encodeURIComponent(entry.address) },
                        "Demande d'appui"));
    }
    return li;
  }
  function renderSection(name, data, append) {
    var sec = $('section[data-section="' + name + '"]', picker);
    var ul = $("ul", sec);
    if (!append) ul.textContent = "";
    (data && data.items || []).forEach(function (entry) { ul.appendChild(entryNode(entry, name)); });
    var total = data && typeof data.total === "number" ? data.total : ul.children.length;
    $(".total", sec).textContent = "(" + (data && data.total_capped ? "plus de " + total : total) + ")";
    sec.hidden = ul.children.length === 0;
    search.next[name] = data ? data.next_offset : null;
    $(".more", sec).hidden = !(data && data.next_offset !== null && data.next_offset !== undefined);
    return ul.children.length;
  }
  var pickerSeq = 0, entrySeq = 0;
  function runSearch(section, offset) {
    search.q = $("#picker-q").value.trim();
    search.where = $("#picker-where").value.trim();
    search.kind = pickerKind();
    var free = $(".picker-free", picker);
    var typed = search.q;
    free.hidden = !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(typed);
    if (!free.hidden) $("button", free).textContent = "Ajouter l'adresse « " + typed + " »";
    if ((search.q + search.where).replace(/\s/g, "").length < 2) {
      $(".picker-hint", picker).hidden = false;
      $(".picker-empty", picker).hidden = true;
      renderSection("professionals", null, false); renderSection("services", null, false);
      return;
    }
    $(".picker-hint", picker).hidden = true;
    var params = new URLSearchParams({ q: search.q, where: search.where, kind: search.kind,
                                       limit: "10", offset: String(offset || 0) });
    // Experts: nearest first from one's practice, unless a place is typed.
    if (search.kind === "experts" && !search.where) params.set("near", "moi");
    var seq = ++pickerSeq;
    fetch("/api/v1/directory/search?" + params.toString(), { credentials: "same-origin",
                                                              headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
      .then(function (res) {
        if (seq !== pickerSeq && !section) return;
        var err = $(".picker-error", picker);
        if (!res.ok) { err.hidden = false; err.textContent = res.body.detail || "La recherche a échoué."; return; }
        err.hidden = true;
        var n = 0;
        if (section) n = renderSection(section, res.body[section], true);
        else {
          n += renderSection("professionals", res.body.professionals, false);
          n += renderSection("services", res.body.services, false);
        }
        $(".picker-empty", picker).hidden = n > 0 || !!section;
        if (window.monsisraPresence) window.monsisraPresence.fill(picker);
      })
      .catch(function () {
        var err = $(".picker-error", picker);
        err.hidden = false; err.textContent = "Annuaire injoignable ; réessayez.";
      });
  }
  if (picker) {
    var searchSoon = debounce(function () { runSearch(null, 0); }, 250);
    $("#open-picker").addEventListener("click", function () {
      chosen = new Map();
      var kind = this.dataset.kind || "all";
      var radio = $('input[name="picker-kind"][value="' + kind + '"]', picker);
      if (radio) radio.checked = true;
      updateCount();
      picker.showModal();
      $("#picker-q").focus();
      if ($("#picker-q").value) runSearch(null, 0);
    });
    $("#picker-q").addEventListener("input", searchSoon);
    $("#picker-where").addEventListener("input", searchSoon);
    var suggest = debounce(function () {
      var v = $("#picker-where").value.trim();
      if (v.length < 2) return;
      fetch("/api/v1/directory/communes?" + new URLSearchParams({ q: v, limit: "8" }).toString(),
            { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (list) {
          var dl = $("#picker-communes");
          dl.textContent = "";
          (Array.isArray(list) ? list : []).forEach(function (c) {
            var label = c.name + (c.department_code ? " (" + c.department_code + ")" : "");
            dl.appendChild(el("option", { value: label }));
          });
        }).catch(function () {});
    }, 200);
    $("#picker-where").addEventListener("input", suggest);
    $$('input[name="picker-kind"]', picker).forEach(function (r) {
      r.addEventListener("change", function () { runSearch(null, 0); });
    });
    $$(".more", picker).forEach(function (b) {
      b.addEventListener("click", function () {
        var name = b.closest("section").dataset.section;
        runSearch(name, search.next[name]);
      });
    });
    picker.addEventListener("change", function (e) {
      var box = e.target;
      if (box.type !== "checkbox") return;
      if (box.checked) chosen.set(box.value, box.dataset.name); else chosen.delete(box.value);
      updateCount();
    });
    $(".picker-free button", picker).addEventListener("click", function () {
      var addr = $("#picker-q").value.trim();
      var button = this;
      button.disabled = true;
      checkAddress(addr).then(function (res) {
        var err = $("#picker-q-error");
        if (!res.ok) {
          // Refused now, with its reason, rather than bounced later.
          err.textContent = "« " + addr + " » refusée : " + res.reason + ".";
          err.hidden = false;
          $("#picker-q").setAttribute("aria-invalid", "true");
          return;
        }
        err.hidden = true; err.textContent = "";
        $("#picker-q").removeAttribute("aria-invalid");
        chosen.set(res.address, "");
        updateCount();
        announce("Adresse ajoutée à la sélection : " + res.address);
      }).then(function () { button.disabled = false; });
    });
    $("#picker-q").addEventListener("input", function () {
      var err = $("#picker-q-error");
      if (!err.hidden) { err.hidden = true; err.textContent = ""; this.removeAttribute("aria-invalid"); }
    });
    $("#picker-validate").addEventListener("click", function () {
      chosen.forEach(function (name, address) { addRecipient(address, name); });
      picker.close();
      refreshSendState();
      $("#open-picker").focus();
    });
    $("#picker-cancel").addEventListener("click", function () { picker.close(); $("#open-picker").focus(); });
    $("#picker-q").addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); runSearch(null, 0); } });
    $("#picker-where").addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); runSearch(null, 0); } });
  }
  function checkAddress(address) {
    /* The server's verdict on an address (same rules as sending): {address, ok, reason, local}. */
    return fetch("/api/v1/addresses/check?" + new URLSearchParams({ address: address }).toString(),
                 { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().then(function (b) { return r.ok ? b : { ok: false, reason: b.detail || "vérification impossible" }; }); })
      .catch(function () { return { ok: false, reason: "vérification impossible (hors ligne)" }; });
  }
  var patientBtn = $("#add-patient");
  if (patientBtn) patientBtn.addEventListener("click", function () {
    var input = $("#patient-ins");
    var ins = input.value.replace(/\s/g, "").toUpperCase();
    if (!/^[12][0-9]{4}(2A|2B|[0-9]{2})[0-9]{8}$/.test(ins)) { announce("INS invalide : 15 caractères attendus."); input.focus(); return; }
    checkAddress(ins + "@" + input.dataset.domain).then(function (res) {
      if (!res.ok) { announce("Adresse du patient refusée : " + res.reason + "."); input.focus(); return; }
      addRecipient(res.address, "Patient " + ins);
      input.value = "";
    });
  });

  /* ---- compose: attachments ---------------------------------------------------------- */
  var form = $("#compose-form");
  var uploading = 0;
  function refreshSendState() {
    var send = $("#send");
    if (send) send.disabled = uploading > 0;
  }
  function upload(file) {
    var list = $("#attachments");
    var li = el("li", { "class": "chip att-chip uploading" });
    var label = el("span", { "class": "chip-label" }, file.name + " — envoi…");
    li.appendChild(label);
    list.appendChild(li);
    uploading++; refreshSendState();
    var body = new FormData();
    body.append("file", file, file.name);
    return fetch("/api/v1/attachments", { method: "POST", body: body, credentials: "same-origin",
                                          headers: { "X-CSRF-Token": CSRF } })
      .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
      .then(function (res) {
        if (!res.ok) { li.classList.add("failed"); label.textContent = "⚠ " + file.name + " : " + (res.body.detail || "refusé"); 
                       li.appendChild(el("button", { type: "button", "class": "chip-remove", "aria-label": "Retirer" }, "×")); return; }
        li.classList.remove("uploading");
        li.insertBefore(el("input", { type: "hidden", name: "attachments", value: res.body.id }), label);
        li.insertBefore(el("input", { type: "hidden", name: "attachment_name", value: res.body.filename }), label);
        label.textContent = res.body.filename;
        label.insertBefore(el("span", { "class": "clip", "aria-hidden": "true" }), label.firstChild);
        li.appendChild(el("button", { type: "button", "class": "chip-remove", "aria-label": "Retirer " + res.body.filename }, "×"));
        announce("Pièce jointe ajoutée : " + res.body.filename);
        autosaveSoon();
      })
      .catch(function () { li.classList.add("failed"); label.textContent = "⚠ " + file.name + " : échec de l'envoi"; })
      .then(function () { uploading--; refreshSendState(); });
  }
  function uploadAll(files) { Array.prototype.forEach.call(files || [], upload); }
  if (form) {
    ["file-input", "camera-input"].forEach(function (id) {
      var input = document.getElementById(id);
      if (input) input.addEventListener("change", function () { uploadAll(input.files); input.value = ""; });
    });
    var zone = $("#dropzone");
    ["dragenter", "dragover"].forEach(function (t) {
      form.addEventListener(t, function (e) {
        if (e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types, "Files") >= 0) {
          e.preventDefault(); zone.classList.add("over");
        }
      });
    });
    ["dragleave", "drop"].forEach(function (t) {
      form.addEventListener(t, function () { zone.classList.remove("over"); });
    });
    form.addEventListener("drop", function (e) {
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      e.preventDefault();
      uploadAll(e.dataTransfer.files);
    });
  }

  /* ---- compose: drafts saved as you type --------------------------------------------- */
  var saving = null, dirty = false, submitting = false;
  function hasContent() {
    return form && (form.subject.value.trim() || form.body.value.trim() || $(".chip", form));
  }
  function autosave() {
    if (!form || submitting || !hasContent()) return Promise.resolve();
    if (saving) { dirty = true; return saving; }
    var status = $("#draft-status");
    var data = new FormData(form);
    saving = fetch(form.dataset.autosave, { method: "POST", body: data, credentials: "same-origin",
                                            headers: { "X-CSRF-Token": CSRF } })
      .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
      .then(function (res) {
        if (res.ok) { $("#draft_id").value = res.body.draft_id; status.textContent = "Brouillon enregistré (" + res.body.saved_at + ")"; }
        else status.textContent = "Brouillon non enregistré : " + (res.body.error || "erreur");
      })
      .catch(function () { status.textContent = "Brouillon non enregistré (hors ligne)"; })
      .then(function () {
        saving = null;
        if (dirty && !submitting) { dirty = false; return autosave(); }
      });
    return saving;
  }
  var autosaveSoon = form ? debounce(autosave, 1200) : function () {};
  if (form) {
    form.addEventListener("input", function (e) { if (!e.target.closest("#picker")) autosaveSoon(); });
    form.addEventListener("submit", function (e) {
      var discard = e.submitter && e.submitter.id === "discard";
      if (uploading > 0 && !discard) { e.preventDefault(); announce("Patientez : envoi des pièces jointes en cours."); return; }
      autosaveSoon.cancel();
      if (saving) {
        e.preventDefault();
        submitting = true;
        // form.submit() ignores the button pressed: carry its target (« Supprimer le brouillon »).
        var action = e.submitter && e.submitter.getAttribute("formaction");
        saving.then(function () { if (action) form.action = action; form.submit(); });
        return;
      }
      submitting = true;
      var send = $("#send"); if (send) send.disabled = true;
    });
  }

  /* ---- mailbox switcher & menus: close on Escape / outside click --------------------- */
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    $$("details.menu[open]").forEach(function (d) { d.open = false; var s = $("summary", d); if (s) s.focus(); });
  });
  document.addEventListener("click", function (e) {
    $$("details.menu[open]").forEach(function (d) { if (!d.contains(e.target)) d.open = false; });
  });

  updateTitle();
  markSelected();
  connect();
})();
