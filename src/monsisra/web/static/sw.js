/* MonSisra service worker: the app shell and the last inbox page, for when the server cannot be
   reached (the page is then marked « Hors ligne »); nothing from /api/ is ever cached. Push
   messages (« Vous avez 2 nouveaux messages ») are shown as notifications. */
"use strict";
const VERSION = "__VERSION__";
const SHELL = "monsisra-shell-" + VERSION;
const PAGES = "monsisra-pages";
const SHELL_FILES = ["/hors-ligne", "/static/app.css", "/static/app.js", "/static/htmx.min.js",
  "/static/accounts.css", "/static/accounts.js", "/static/reach.css", "/static/reach.js",
  "/static/favicon.svg", "/static/icons/icon-192.png"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(SHELL_FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== SHELL && k !== PAGES).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

async function inboxPage(request) {
  try {
    const response = await fetch(request);
    const cache = await caches.open(PAGES);
    if (response.ok && !response.redirected) {
      await cache.put("/boite", response.clone());
    } else if (response.redirected) {
      await cache.delete("/boite");  // logged out: nobody's inbox stays on this device
    }
    return response;
  } catch (err) {
    const cached = await caches.match("/boite", { cacheName: PAGES });
    if (!cached) {
      return (await caches.match("/hors-ligne")) || Response.error();
    }
    const html = (await cached.text()).replace("<body ", '<body data-hors-ligne="1" ');
    return new Response(html, { headers: { "Content-Type": "text/html; charset=utf-8" } });
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin || url.pathname.startsWith("/api/")) {
    return;  // the network only
  }
  if (request.mode === "navigate") {
    if (url.pathname === "/boite" && !request.headers.get("HX-Request")) {
      event.respondWith(inboxPage(request));
    } else {
      event.respondWith(fetch(request).catch(async () => (await caches.match("/hors-ligne")) || Response.error()));
    }
    return;
  }
  if (url.pathname.startsWith("/static/")) {
    event.respondWith(fetch(request).catch(async () =>
      (await caches.match(request, { ignoreSearch: true, cacheName: SHELL })) || Response.error()));
  }
});

self.addEventListener("push", (event) => {
  let data = { title: "MonSisra", body: "Vous avez de nouveaux messages sur MonSisra", url: "/boite" };
  try { data = Object.assign(data, event.data ? event.data.json() : {}); } catch (err) { /* plain text */ }
  event.waitUntil(self.registration.showNotification(data.title, {
    body: data.body, icon: "/static/icons/icon-192.png", badge: "/static/icons/icon-192.png",
    tag: "monsisra-nouveaux", data: { url: data.url || "/boite" } }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = (event.notification.data && event.notification.data.url) || "/boite";
  event.waitUntil(self.clients.matchAll({ type: "window" }).then((list) => {
    for (const client of list) {
      if (new URL(client.url).pathname.startsWith("/boite") && "focus" in client) { return client.focus(); }
    }
    return self.clients.openWindow(target);
  }));
});
