/* MonSisra — live refresh of the « Demandes d'appui » list, of a patient's care team and of the
   shared record (its timeline, a conversation read from it): when the server says one changed, the
   part is fetched again and swapped in place. */
(function () {
  "use strict";
  var busy = false;
  function refresh(selector) {
    var current = document.querySelector(selector);
    if (!current || busy) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(selector);
        if (fresh) current.replaceWith(fresh);
      })
      .catch(function () { /* the next event or a reload shows it */ })
      .then(function () { busy = false; });
  }
  document.addEventListener("monsisra:event", function (e) {
    var ev = e.detail || {};
    if (ev.type === "support_request.updated") refresh("#support-requests");
    else if (ev.type === "patient.care_team") refresh("#care-team");
    else if (ev.type === "patient.record") {
      var here = document.querySelector("[data-record-patient]");
      if (!here || here.dataset.recordPatient !== String(ev.patient_id)) return;
      var chat = document.getElementById("chat-consultation");
      if (!chat) refresh("#timeline");
      else if (chat.dataset.conversationId === String(ev.conversation_id)) refresh("#chat-log");
    }
  });
})();
