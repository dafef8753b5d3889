// The replay page: /replay/{show}[?room=<distributor>&ref=<sharer>]. Plays the MP4 (or the HLS
// playlist while the MP4 is being made, where the browser plays HLS), with the product chapters
// beside it; a chapter seeks there. A chapter's Buy link opens the product's link with the
// viewer's attribution (lc_attr), as on the watch page: sales made from the replay count too,
// for the room (?room=) and sharer (?ref=) that brought the viewer.
import {
  $, api, attributedLink, rememberedViewer, showError, sleep, storedViewer, viewerKey,
} from "/static/common.js";

const [, , show] = location.pathname.split("/");
const params = new URLSearchParams(location.search);
const room = params.get("room") || "hq";
const ref = params.get("ref");
const video = $("#video");
const STATES = { recording: "Live now: recording", processing: "Preparing the replay…", ready: "Replay", failed: "Unavailable" };

let chapters = [];
const products = new Map(); // id -> product as this room sees it (those with a link get a Buy link)

function clock(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  return `${h ? `${h}:` : ""}${mm}:${String(s % 60).padStart(2, "0")}`;
}

function renderChapters() {
  const list = $("#chapters");
  list.replaceChildren();
  $("#no-chapters").hidden = chapters.length > 0;
  for (const chapter of chapters) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.start = chapter.start_s;
    b.textContent = `${clock(chapter.start_s)} · ${chapter.title}`;
    b.setAttribute("aria-label", `Play from ${clock(chapter.start_s)}: ${chapter.title}`);
    b.addEventListener("click", () => {
      video.currentTime = chapter.start_s;
      video.play().catch(() => {});
    });
    li.append(b);
    const product = products.get(chapter.product);
    if (product?.link) {
      const buy = document.createElement("a");
      buy.className = "button buy";
      buy.target = "_blank";
      buy.rel = "noopener";
      buy.dataset.product = product.id;
      buy.href = buyLink(product.link);
      buy.textContent = "Buy";
      buy.setAttribute("aria-label", `Buy ${product.title}`);
      li.append(buy);
    }
    list.append(li);
  }
}

video.addEventListener("timeupdate", () => {
  const buttons = [...document.querySelectorAll("#chapters button")];
  let active = null;
  for (const b of buttons) if (Number(b.dataset.start) <= video.currentTime + 0.25) active = b;
  for (const b of buttons) b.setAttribute("aria-current", String(b === active));
});

// -- buying: the shop's link carries who brought the buyer (?lc_attr=) -------------------------
let viewer = null; // {viewer_id, room, token}: the watch page's for this show, or one registered here
let attribution = null; // {attribution, expires_at}
let asking = null; // the attribution request under way

const attributionValid = () => attribution && attribution.expires_at - 60 > Date.now() / 1000;
const buyLink = (link) => attributedLink(link, attributionValid() ? attribution.attribution : null);

function updateBuyLinks() {
  for (const a of document.querySelectorAll("#chapters a[data-product]")) {
    const link = products.get(a.dataset.product)?.link;
    if (link) a.href = buyLink(link);
  }
}

/** Get an attribution unless a valid one is held; never fails: without one the links stay plain. */
function prepareAttribution() {
  if (attributionValid() || !viewer?.token) return Promise.resolve();
  asking ??= api("POST", `/api/shows/${show}/attribution`, { token: viewer.token })
    .then((fresh) => {
      attribution = fresh;
      // A page left open keeps a valid link: a new one when this one is a minute from expiring.
      const renewIn = Math.min(Math.max((fresh.expires_at - 59) * 1000 - Date.now(), 10000), 2 ** 31 - 1);
      setTimeout(prepareAttribution, renewIn);
    })
    .catch(() => {}) // a sale is never blocked: the plain link still opens
    .finally(() => { asking = null; });
  return asking.then(updateBuyLinks);
}

// The tap follows the anchor itself (no window.open after an await: popup blockers allow it);
// the href is made right before the browser reads it.
$("#chapters").addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-product]");
  if (!a) return;
  const link = products.get(a.dataset.product)?.link;
  if (link) a.href = buyLink(link);
  prepareAttribution(); // for the next tap, if this one had none
});

/** The watch page's viewer of this show (a token the brand gave for this room first), else a new
 * one in ?room= with ?ref= as the sharer; null when none can be had (token or shopper shows). */
function identify() {
  const key = storedViewer(viewerKey(show, room)) ? viewerKey(show, room) : viewerKey(show);
  return rememberedViewer(show, room, ref, key).catch(() => null);
}

/** This room's shelf (prices, links), then a viewer and its attribution once a product has a link. */
async function setUpBuying(status) {
  const tokenShow = status?.playback === "token"; // the shelf, too, needs the viewer's token
  if (tokenShow) viewer = await identify();
  let shelf;
  for (;;) {
    try {
      shelf = await api("GET", `/api/shows/${show}/products?room=${encodeURIComponent(room)}`,
        { token: tokenShow ? viewer?.token : undefined });
      break;
    } catch (e) {
      if (e.status !== 0 && e.status < 500) return; // not for this viewer or room: chapters only
      await sleep(3000);
    }
  }
  for (const product of shelf.products) products.set(product.id, product);
  renderChapters();
  if (!shelf.products.some((p) => p.link)) return;
  viewer ??= await identify();
  await prepareAttribution();
}

// -- comments at their time in the show: those written before the playhead ---------------------
let comments = []; // this room's, oldest first, each with its stream_time (seconds into the show)

/** Read the room's comments (every page); none when the server has no comments for this show. */
async function loadComments(tokenShow) {
  const all = [];
  for (let after = 0, pages = 0; pages < 50; pages++) {
    let page;
    try {
      page = await api("GET", `/api/shows/${show}/comments?room=${encodeURIComponent(room)}&after=${after}`,
        { token: tokenShow ? viewer?.token : undefined });
    } catch {
      break; // no comments API, or not for this viewer: the replay plays without them
    }
    const batch = page.comments ?? [];
    if (!batch.length) break;
    all.push(...batch);
    after = Math.max(after, ...batch.map((c) => c.id));
  }
  comments = all.filter((c) => typeof c.stream_time === "number").sort((a, b) => a.stream_time - b.stream_time);
  $("#replay-chat").hidden = comments.length === 0;
  showComments();
}

let shownComments = -1;
function showComments() {
  const now = video.currentTime;
  let n = 0;
  while (n < comments.length && comments[n].stream_time <= now) n++;
  if (n === shownComments) return;
  shownComments = n;
  const list = $("#comments");
  list.replaceChildren();
  for (const c of comments.slice(Math.max(0, n - 100), n)) { // the last hundred before the playhead
    const li = document.createElement("li");
    li.dataset.id = c.id;
    const at = document.createElement("time");
    at.textContent = clock(c.stream_time);
    const name = document.createElement("b");
    name.textContent = c.name ?? "";
    const text = document.createElement("span");
    text.textContent = c.text;
    li.append(at, name, text);
    list.append(li);
  }
  list.scrollTop = list.scrollHeight; // the newest in sight
  $("#no-comments").hidden = n > 0;
}
video.addEventListener("timeupdate", showComments);
video.addEventListener("seeked", showComments);

async function main() {
  const status = await api("GET", `/api/shows/${show}/status`).catch(() => null);
  if (status) {
    $("#title").textContent = `${status.title} · Replay`;
    document.title = `${status.title} · Replay`;
  }
  setUpBuying(status).then(() => loadComments(status?.playback === "token"));
  let source = null;
  let renderedChapters = "";
  for (;;) {
    let info;
    try {
      info = await api("GET", `/api/shows/${show}/replay`);
      showError($("#error"), null);
    } catch (e) {
      showError($("#error"), e.status === 401 ? new Error("This replay is private.") : e);
      if (e.status === 0 || e.status >= 500) { // a network blip or a restart: try again
        await sleep(3000);
        continue;
      }
      $("#state").textContent = "Unavailable";
      return;
    }
    $("#state").textContent = STATES[info.state] || info.state;
    if (info.error) showError($("#error"), new Error(`Recording problem: ${info.error}`));
    if (JSON.stringify(info.chapters) !== renderedChapters) {
      renderedChapters = JSON.stringify(info.chapters);
      chapters = info.chapters;
      renderChapters();
    }
    const hls = video.canPlayType("application/vnd.apple.mpegurl") ? info.hls_url : null;
    const wanted = info.mp4_url || (info.state !== "recording" ? hls : null);
    if (wanted && wanted !== source) {
      const at = video.currentTime;
      source = wanted;
      video.src = wanted;
      if (at) video.currentTime = at;
    }
    if (info.mp4_url) {
      $("#download").hidden = false;
      $("#download").href = info.mp4_url;
    }
    if (info.state === "ready" || info.state === "failed") return;
    await sleep(info.state === "recording" ? 10000 : 1000);
  }
}
main();
