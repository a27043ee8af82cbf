/* The installable app in the page: registers the service worker, marks a page served offline
   (« Hors ligne »), clears the offline copy on logout, and subscribes this device to Web Push
   from Paramètres → Notifications; « Copier » buttons (an app password shown once). */
(function () {
  "use strict";
  var CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function offlineBanner() {
    if (document.getElementById("hors-ligne")) { return; }
    var div = document.createElement("div");
    div.id = "hors-ligne";
    div.className = "offline-banner";
    div.setAttribute("role", "status");
    div.textContent = "Hors ligne : voici la dernière boîte consultée sur cet appareil ; elle n'est pas à jour et rien ne peut être envoyé.";
    document.body.insertBefore(div, document.body.firstChild);
  }

  function start() {
    if (document.body.getAttribute("data-hors-ligne") === "1") { offlineBanner(); }
    window.addEventListener("offline", offlineBanner);
    window.addEventListener("online", function () {
      if (document.body.getAttribute("data-hors-ligne") !== "1") {
        var b = document.getElementById("hors-ligne");
        if (b) { b.remove(); }
      }
    });
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(function () { /* not installable here */ });
    }
    document.querySelectorAll('form[action="/deconnexion"]').forEach(function (form) {
      form.addEventListener("submit", function () {
        if (window.caches) { caches.delete("monsisra-pages"); }
      });
    });
    pushButton();
    copyButtons();
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      var source = document.querySelector(button.getAttribute("data-copy"));
      var status = button.parentNode.querySelector("[data-copy-status]");
      button.addEventListener("click", function () {
        var text = source ? source.textContent.trim() : "";
        var done = function () { if (status) { status.textContent = "Copié."; } };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { selectText(source, status); });
        } else { selectText(source, status); }
      });
    });
  }

  function selectText(node, status) {
    if (!node) { return; }
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    if (status) { status.textContent = "Sélectionné : copiez avec Ctrl+C (ou appui long sur mobile)."; }
  }

  function b64ToBytes(value) {
    var pad = "=".repeat((4 - value.length % 4) % 4);
    var raw = atob((value + pad).replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
  }

  function pushButton() {
    var button = document.getElementById("push-enable");
    var status = document.getElementById("push-status");
    if (!button || !("serviceWorker" in navigator) || !("PushManager" in window)) {
      if (status) { status.textContent = "Ce navigateur ne reçoit pas de notifications."; }
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      status.textContent = "Activation…";
      Notification.requestPermission().then(function (permission) {
        if (permission !== "granted") { throw new Error("Notifications refusées dans le navigateur."); }
        return Promise.all([navigator.serviceWorker.ready,
          fetch("/api/v1/push/public-key", { credentials: "same-origin" }).then(function (r) { return r.json(); })]);
      }).then(function (both) {
        return both[0].pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(both[1].public_key) });
      }).then(function (subscription) {
        return fetch("/api/v1/me/push-subscriptions", { method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
          body: JSON.stringify(subscription.toJSON()) });
      }).then(function (r) {
        if (!r.ok) { throw new Error("Abonnement refusé par le serveur."); }
        status.textContent = "Cet appareil recevra les notifications.";
      }).catch(function (err) { status.textContent = err.message; });
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
