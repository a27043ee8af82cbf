/* MonSisra — live refresh of the « Demandes d'appui » list, of a patient's care team and of the
   shared record (its timeline, a conversation read from it): when the server says one changed, the
   part is fetched again and swapped in place. */
(function () {
  "use strict";
  // One fetch per part at a time; an event during it asks for one more afterwards (dropping it
  // would leave the part as it was before the change that event announced).
  var state = {};
  function refresh(selector) {
    var current = document.querySelector(selector);
    if (!current) return;
    if (state[selector]) { state[selector].again = true; return; }
    state[selector] = { again: false };
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(selector);
        var now = document.querySelector(selector);
        if (fresh && now) {
          now.replaceWith(fresh);
          document.dispatchEvent(new CustomEvent("monsisra:swapped", { detail: { target: fresh } }));
        }
      })
      .catch(function () { /* the next event or a reload shows it */ })
      .then(function () {
        var again = state[selector].again;
        delete state[selector];
        if (again) refresh(selector);
      });
  }
  document.addEventListener("monsisra:event", function (e) {
    var ev = e.detail || {};
    if (ev.type === "support_request.updated") refresh("#support-requests");
    else if (ev.type === "patient.care_team") { refresh("#care-team"); refresh("#care-team-toggle"); }
    else if (ev.type === "patient.record") {
      var here = document.querySelector("[data-record-patient]");
      if (!here || here.dataset.recordPatient !== String(ev.patient_id)) return;
      var chat = document.getElementById("chat-consultation");
      if (!chat) refresh("#timeline");
      else if (chat.dataset.conversationId === String(ev.conversation_id)) refresh("#chat-log");
    }
  });
})();
