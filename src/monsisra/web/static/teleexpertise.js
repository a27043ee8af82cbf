/* MonSisra — live « Téléexpertises »: when the server says a request changed (the other side
   acted, a member took it, a reminder), the list or the request's page is fetched again and its
   live parts swapped in place: state, who is awaited, who took it, the exchange, the actions.
   One refresh at a time; an event during a refresh asks for one more afterwards. The actions are
   left alone while the user is writing in them (their text would be lost). */
(function () {
  "use strict";
  var oneAtATime = window.MonSisraOneAtATime;  // app.js runs first (both deferred, in this order)
  function writing(part) {
    if (!part) return false;
    if (part.contains(document.activeElement) && document.activeElement.matches("textarea, input")) return true;
    return Array.prototype.some.call(part.querySelectorAll("textarea, input:not([type=hidden])"), function (f) {
      return f.type === "file" ? f.files && f.files.length > 0 : f.type !== "checkbox" && f.value.trim() !== "";
    });
  }
  function swap(selectors) {
    return fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        selectors.forEach(function (sel) {
          var current = document.querySelector(sel), fresh = doc.querySelector(sel);
          if (!current || !fresh || (current.hasAttribute("data-keep-typing") && writing(current))) return;
          current.replaceWith(fresh);
        });
      })
      .catch(function () { /* the next event or a reload shows it */ });
  }
  var detail = document.querySelector(".te-detail[data-teleexpertise]");
  var refreshDetail = oneAtATime(function () { return swap(["#te-status", "#te-steps", "#te-actions"]); });
  var refreshList = oneAtATime(function () { return swap(["#teleexpertises"]); });
  document.addEventListener("monsisra:event", function (e) {
    var ev = e.detail || {};
    if (ev.type !== "teleexpertise.updated") return;
    if (detail && String(ev.id) === detail.dataset.teleexpertise) refreshDetail();
    else if (document.getElementById("teleexpertises")) refreshList();
  });
})();
