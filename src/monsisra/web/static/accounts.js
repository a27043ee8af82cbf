/* MonSisra — what identity and access add to the pages: an open inbox whose mailbox is taken
   back from its delegate leaves it at once. Follows app.js's live feed ("monsisra:event"). */
(function () {
  "use strict";
  function shows(mailboxId) {
    var id = String(mailboxId);
    var list = document.querySelector("#liste");
    if (list && list.dataset.mbs && list.dataset.mbs.split(",").indexOf(id) >= 0) return true;
    if (document.querySelector('#message[data-mb="' + id + '"]')) return true;
    var params = new URLSearchParams(location.search);
    if (params.get("bal") === id || params.get("ouvrir_bal") === id) return true;
    return !!document.querySelector('.switcher a[href*="bal=' + id + '&"]');
  }
  document.addEventListener("monsisra:event", function (e) {
    var ev = e.detail || {};
    if (ev.type !== "mailbox.revoked" || typeof ev.mailbox_id !== "number") return;
    if (shows(ev.mailbox_id)) {
      location.assign("/boite/acces-retire?adresse=" + encodeURIComponent(ev.address || ""));
    }
  });
})();
