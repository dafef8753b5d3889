// The service worker of the shows page's reminders, served as /sw.js so its scope is the whole
// site. A push is {show, title, url} (JSON; the watch URL); a click opens or focuses that page.
self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: event.data?.text() };
  }
  const title = data.title ? `${data.title} is live` : "A show is live";
  const url = data.url || data.watch_url || (data.show ? `/watch/${data.show}` : "/shows");
  event.waitUntil(self.registration.showNotification(title, {
    body: "Tap to watch now.",
    tag: `livecast-${data.show || "show"}`, // one notification per show, however often it is sent
    data: { url },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data?.url || "/shows", self.location.origin).href;
  event.waitUntil((async () => {
    const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const tab = open.find((c) => c.url === url);
    if (tab) return tab.focus();
    return self.clients.openWindow(url);
  })());
});
