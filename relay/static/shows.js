// The shows page: /shows. What is live now, what is coming up (each with "Remind me": a Web Push
// subscription the server uses when the show goes live), and the replays. A reminder set here is
// remembered in localStorage so the page shows "Reminder set" and can cancel it.
import { $, api, showError, sleep } from "/static/common.js";

const reminderKey = (show) => `livecast.reminder.${show}`;
const pushable = "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;

function when(startsAt) {
  if (!startsAt) return "";
  return new Date(startsAt * 1000).toLocaleString(undefined, {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
  });
}

function item(show, { link, label, extra }) {
  const li = document.createElement("li");
  li.dataset.show = show.id;
  const what = document.createElement("div");
  what.className = "what";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = show.title;
  what.append(title);
  if (show.starts_at) {
    const at = document.createElement("time");
    at.className = "when";
    at.dateTime = new Date(show.starts_at * 1000).toISOString();
    at.textContent = when(show.starts_at);
    what.append(at);
  }
  li.append(what);
  if (link) {
    const a = document.createElement("a");
    a.className = "button";
    a.href = link;
    a.textContent = label;
    a.setAttribute("aria-label", `${label}: ${show.title}`);
    li.append(a);
  }
  if (extra) li.append(extra);
  return li;
}

// -- reminders: a push subscription of this browser, posted for one show ------------------------
const stored = (show) => {
  try {
    return JSON.parse(localStorage.getItem(reminderKey(show)) || "null");
  } catch {
    return null;
  }
};

/** The server's VAPID public key (URL-safe base64, as JSON or as text) as bytes. */
async function serverKey() {
  const res = await fetch("/api/webpush/vapid-public-key");
  if (!res.ok) throw new Error("Reminders are not available right now.");
  const raw = (res.headers.get("Content-Type") || "").includes("json") ? (await res.json()).public_key : await res.text();
  const b64 = raw.trim().replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}

async function subscription() {
  if (Notification.permission !== "granted" && await Notification.requestPermission() !== "granted") {
    throw new Error("Allow notifications to get a reminder.");
  }
  // (/sw.js: its scope is the whole site, so it can open any watch page from a notification.)
  const registration = await navigator.serviceWorker.register("/sw.js");
  await navigator.serviceWorker.ready;
  const existing = await registration.pushManager.getSubscription();
  if (existing) return existing;
  return registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: await serverKey() });
}

function reminderControl(show) {
  const box = document.createElement("div");
  box.className = "row";
  const state = document.createElement("span");
  state.className = "reminder";
  state.setAttribute("role", "status");
  const button = document.createElement("button");
  button.type = "button";
  const render = () => {
    const set = stored(show.id);
    state.textContent = set ? "Reminder set" : "";
    button.textContent = set ? "Cancel reminder" : "Remind me";
    button.className = set ? "secondary" : "";
    button.setAttribute("aria-label", `${button.textContent}: ${show.title}`);
  };
  button.addEventListener("click", async () => {
    button.disabled = true;
    showError($("#error"), null);
    try {
      const set = stored(show.id);
      if (set) {
        await api("DELETE", `/api/shows/${show.id}/subscriptions/${set.id}`).catch((e) => {
          if (e.status !== 404) throw e; // (gone already: the show started or ended)
        });
        localStorage.removeItem(reminderKey(show.id));
      } else {
        const sub = await subscription();
        const made = await api("POST", `/api/shows/${show.id}/subscriptions`, { body: { webpush: sub.toJSON() } });
        localStorage.setItem(reminderKey(show.id), JSON.stringify({ id: made.id }));
      }
    } catch (e) {
      showError($("#error"), e.status === 404 ? new Error("Reminders are not available for this show.") : e);
    } finally {
      button.disabled = false;
      render();
    }
  });
  render();
  box.append(state, button);
  return box;
}

// -- the lists ---------------------------------------------------------------------------------
async function list(state) {
  try {
    return (await api("GET", `/api/shows?state=${state}`)).shows ?? [];
  } catch (e) {
    if (e.status === 0 || e.status >= 500) throw e;
    return []; // a server that lists no shows publicly: an empty page, no error
  }
}

function fill(id, shows, make) {
  $(`#${id}`).replaceChildren(...shows.map(make));
  $(`#none-${id === "replays" ? "replays" : id}`).hidden = shows.length > 0;
}

async function refresh() {
  const [live, upcoming, ended] = await Promise.all(["live", "scheduled", "ended"].map(list));
  fill("live", live, (s) => item(s, { link: s.watch_url, label: "Watch" }));
  upcoming.sort((a, b) => (a.starts_at ?? Infinity) - (b.starts_at ?? Infinity));
  $("#no-push").hidden = pushable || upcoming.length === 0;
  fill("upcoming", upcoming, (s) => item(s, { extra: pushable ? reminderControl(s) : null }));
  const replays = ended.filter((s) => s.replay_url);
  fill("replays", replays, (s) => item(s, { link: s.replay_url, label: "Watch the replay" }));
  // A reminder of a show that is no longer coming up is forgotten (the server sent it or dropped it).
  for (const s of [...live, ...ended]) localStorage.removeItem(reminderKey(s.id));
}

async function main() {
  for (;;) {
    try {
      await refresh();
      showError($("#error"), null);
    } catch (e) {
      showError($("#error"), e);
    }
    await sleep(60000); // shows go live now and then: the page stays current if left open
  }
}
main();
