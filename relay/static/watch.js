// The watch page: /watch/{show}[/{distributor}]?ref=<sharer>
// Plays the room over WHEP (muted autoplay), shows the product card and flash coupons of this
// room from its event stream, and reconnects by itself after a network drop or server restart.
// The card's Buy link carries the viewer's attribution (lc_attr) so the shop's order is credited
// to the room and sharer; Share copies this room's link with the viewer as the sharer.
import {
  $, api, attributedLink, connectionLost, describeToken, endSession, money, randomKey, rememberedViewer, sleep,
  viewerKey, whepPlay,
} from "/static/common.js";
import { setUpChat } from "/static/chat.js";

const [, , show, room = "hq"] = location.pathname.split("/");
const params = new URLSearchParams(location.search);
const ref = params.get("ref");
// A viewer token in the link (from the brand's site). Anyone can put one in a link, so it is
// taken out of the address at once and used only when the viewer says so.
const given = params.get("token");
if (given) history.replaceState(null, "", location.pathname + (params.get("ref") ? `?ref=${encodeURIComponent(params.get("ref"))}` : ""));
const video = $("#video");
const coupons = new Map(); // id -> coupon as this room sees it
let status = null; // the public show status
let viewer = null; // {viewer_id, token}
let playing = false;
let current = null; // the WHEP session playing now

// A closed tab or a page left behind ends its session at once, so room counts stay true.
addEventListener("pagehide", () => {
  if (!current) return;
  current.pc.close();
  fetch(current.location, { method: "DELETE", keepalive: true }).catch(() => {});
  current = null;
});

// A landscape picture fills the width with its own frames blurred behind; a portrait one fills the screen.
video.addEventListener("resize", () => {
  $("#watch").classList.toggle("portrait-video", video.videoHeight > video.videoWidth);
});

// -- identity: a signed viewer token that keeps the room this viewer came through -------------
// Per show (credit stays with the first room); a token given for token playback is per room.
const storageKey = () => viewerKey(show, given ? room : null);

/** Ask before signing in with a token from the link; true when the viewer accepts it. */
function confirmToken(token) {
  const about = describeToken(token);
  if (!about || about.room !== room) return Promise.resolve(false); // not for this room: ignore it
  $("#confirm-who").textContent = about.who;
  $("#confirm").hidden = false;
  return new Promise((resolve) => {
    const answer = (yes) => () => {
      $("#confirm").hidden = true;
      resolve(yes);
    };
    $("#confirm-yes").addEventListener("click", answer(true), { once: true });
    $("#confirm-no").addEventListener("click", answer(false), { once: true });
    $("#confirm-no").focus();
  });
}

async function identify() {
  if (given && await confirmToken(given)) {
    const identity = { token: given };
    localStorage.setItem(storageKey(), JSON.stringify(identity));
    return identity;
  }
  return rememberedViewer(show, room, ref, storageKey()); // (not its own sharer: see common.js)
}

// -- show state -------------------------------------------------------------------------------
function render() {
  const badge = $("#badge");
  const live = status?.state === "live";
  badge.textContent = !status ? "Connecting…" : live ? (status.host === "live" ? "LIVE" : "Reconnecting…")
    : status.state === "ended" ? "Ended" : "Soon";
  badge.classList.toggle("live", live && status.host === "live");
  $("#viewers").textContent = `${status?.room_viewers ?? 0} watching`; // this room's own count
  if (status) {
    $("#title").textContent = status.title;
    $("#room").textContent = status.room_name || "";
    $("#room").hidden = !status.room_name;
    document.title = `${status.room_name ? `${status.room_name} · ` : ""}${status.title} · Live`;
  }
  // Sound can only be turned on while the show plays.
  $("#unmute").hidden = !(live && playing && video.muted);
  $("#share").hidden = status?.playback === "token"; // others could not watch without their own token
  let text = "";
  if (status?.state === "scheduled") text = "The show has not started yet. It will play here as soon as it does.";
  else if (status?.state === "live" && status.host !== "live") text = "The host is reconnecting…";
  else if (status?.state === "live" && !playing) text = "Connecting to the live show…";
  else if (status?.state === "ended") text = "The show has ended.";
  $("#state").hidden = !text;
  $("#state-text").textContent = text;
  const replay = $("#state-replay");
  replay.hidden = !(status?.state === "ended" && status.replay_page);
  if (status?.replay_page) replay.href = status.replay_page;
  if (status?.state === "ended") $("#coupon").hidden = true;
}

async function refreshStatus() {
  try {
    status = await api("GET", `/api/shows/${show}/status?room=${encodeURIComponent(room)}`);
    $("#error").textContent = "";
  } catch (e) {
    $("#error").textContent = e.message;
    if (e.status === 404) {
      $("#state").hidden = false;
      $("#state-text").textContent = "This show does not exist.";
      return;
    }
  }
  render();
}

async function followStatus() {
  for (;;) {
    await refreshStatus();
    await sleep(status?.state === "ended" ? 30000 : 3000);
  }
}

// -- media: WHEP, again and again while the show is live -------------------------------------
async function followMedia() {
  const whep = `/whep/${show}${room === "hq" ? "" : `/${room}`}`;
  let backoff = 1000;
  for (;;) {
    if (status?.state !== "live") {
      await sleep(1000);
      continue;
    }
    let session = null;
    try {
      session = await whepPlay(whep, video, status.playback === "token" ? viewer?.token : undefined);
      current = session;
      $("#backdrop").srcObject = video.srcObject; // the same decoded frames, blurred behind
      playing = true;
      backoff = 1000;
      render();
      await connectionLost(session.pc);
    } catch (e) {
      $("#error").textContent = e.message;
      if (e.status === 401 || e.status === 403) { // this viewer may not watch this room: say so
        $("#state").hidden = false;
        $("#state-text").textContent = e.message;
        backoff = 30000;
      }
      if (e.status === 404 || e.status === 409) await refreshStatus(); // not live (any more)
    }
    playing = false;
    current = null;
    if (session) {
      session.pc.close();
      endSession(session.location);
    }
    render();
    await sleep(backoff * (0.8 + 0.4 * Math.random())); // jittered: viewers do not retry in lockstep
    backoff = Math.min(backoff * 2, 30000);
  }
}

$("#unmute").addEventListener("click", () => {
  video.muted = false;
  video.play().catch(() => {});
  render();
});

// -- buying: the shop's link carries who brought the buyer (?lc_attr=) -------------------------
let attribution = null; // {attribution, expires_at} of this viewer for this show
let asking = null; // the attribution request under way
let cardProduct = null;

const attributionValid = () => attribution && attribution.expires_at - 60 > Date.now() / 1000;

/** Get a fresh attribution unless one is held (or `renew`); never fails: without one the link goes plain. */
function prepareAttribution(renew = false) {
  if ((attributionValid() && !renew) || !viewer?.token) return Promise.resolve();
  asking ??= api("POST", `/api/shows/${show}/attribution`, { token: viewer.token })
    .then((fresh) => {
      attribution = fresh;
      // A card pinned for hours keeps a valid link without waiting for a tap.
      const renewIn = Math.min(Math.max((fresh.expires_at - 90) * 1000 - Date.now(), 10000), 2 ** 31 - 1);
      setTimeout(() => { if (!$("#card").hidden) prepareAttribution(true).then(updateBuyLink); }, renewIn);
    })
    .catch(() => {}) // a sale is never blocked: the plain link still opens
    .finally(() => { asking = null; });
  return asking;
}

/** The product's link with lc_attr added (its own query and fragment kept), or as it is. */
function buyLink(link) {
  return attributedLink(link, attributionValid() ? attribution.attribution : null);
}

function updateBuyLink() {
  if (cardProduct?.link) $("#card-link").href = buyLink(cardProduct.link);
}

// The tap follows the anchor itself (no window.open after an await: popup blockers allow it);
// the href is made right before the browser reads it.
$("#card-link").addEventListener("click", () => {
  updateBuyLink();
  prepareAttribution().then(updateBuyLink); // for the next tap, if this one had none
});

// -- share: this room's link with this viewer as the sharer (?ref=) ---------------------------
function shareLink() {
  const url = new URL(`/watch/${show}${room === "hq" ? "" : `/${room}`}`, location.href);
  const me = viewer?.viewer_id ?? (viewer?.token && describeToken(viewer.token)?.who);
  if (me) url.searchParams.set("ref", me);
  return url.toString();
}

$("#share").addEventListener("click", async () => {
  const link = shareLink();
  try {
    await navigator.clipboard.writeText(link);
    $("#share").textContent = "Copied";
    setTimeout(() => { $("#share").textContent = "Share"; }, 1500);
  } catch { // no clipboard here (plain http, or the embedding site forbids it): show the link
    $("#share-url").value = link;
    $("#share-box").hidden = false;
    $("#share-url").select();
  }
});
$("#share-close").addEventListener("click", () => { $("#share-box").hidden = true; });

// -- sales: "Someone just bought …" -----------------------------------------------------------
let toastTimer = null;
function showSale(sale) {
  const title = sale.product?.title;
  if (!title) return;
  const toast = $("#toast");
  toast.textContent = `Someone just bought ${title}`; // a burst (a resumed stream) shows the latest only
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 4000);
}

// -- comments and likes (chat.js) --------------------------------------------------------------
const chat = setUpChat({
  show,
  viewer: () => viewer,
  identify: async () => (viewer ??= await identify()),
});

// -- events: card, coupons, show state --------------------------------------------------------
function showCard(product) {
  $("#card-title").textContent = product.title;
  $("#card-price").textContent = money(product.price, status?.currency);
  const image = $("#card-image");
  image.hidden = !product.image_url;
  if (product.image_url) image.src = product.image_url;
  const link = $("#card-link");
  link.hidden = !product.link;
  cardProduct = product;
  updateBuyLink();
  if (product.link) prepareAttribution().then(updateBuyLink);
  link.setAttribute("aria-label", `Buy ${product.title}`);
  $("#card").hidden = false;
}

function couponChanged(coupon) {
  coupons.set(coupon.id, { ...coupons.get(coupon.id), ...coupon });
  renderCoupon();
}

function currentCoupon() {
  const now = Date.now() / 1000;
  let chosen = null;
  for (const c of coupons.values()) {
    // "scheduled" was the state when the event was made; it opens at starts_at without a new event.
    const open = (c.state === "live" || c.state === "scheduled") && (!c.ends_at || c.ends_at > now)
      && (!c.starts_at || c.starts_at <= now);
    if (open && (!chosen || c.ends_at < chosen.ends_at)) chosen = c;
  }
  return chosen;
}

let shownCoupon = null;
const decided = new Set(); // coupons this viewer has had a final answer for
let claiming = false;
function renderCoupon() {
  const coupon = currentCoupon();
  $("#coupon").hidden = !coupon || status?.state === "ended";
  if (!coupon) return;
  if (shownCoupon !== coupon.id) {
    shownCoupon = coupon.id;
    $("#coupon-result").textContent = "";
  }
  $("#claim").disabled = decided.has(coupon.id) || claiming;
  $("#coupon-title").textContent = coupon.title;
  $("#coupon-remaining").textContent = coupon.remaining > 0 ? `${coupon.remaining} left` : "Sold out";
  const left = Math.max(0, Math.round(coupon.ends_at - Date.now() / 1000));
  $("#coupon-countdown").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} to go`;
}
setInterval(renderCoupon, 500);

const RESULTS = {
  claimed: "Claimed! It is yours.",
  already_claimed: "Already claimed.",
  sold_out: "Sold out.",
  not_started: "Not started yet.",
  ended: "This coupon has ended.",
  room_cap_reached: "All gone in this room.",
};

$("#claim").addEventListener("click", async () => {
  const coupon = currentCoupon();
  if (!coupon) return;
  const button = $("#claim");
  const result = $("#coupon-result");
  button.disabled = true;
  claiming = true;
  try {
    await claimOnce(coupon, button, result);
  } finally {
    claiming = false;
  }
});

async function claimOnce(coupon, button, result) {
  if (!viewer) {
    viewer = await identify().catch((e) => {
      result.textContent = e.message;
      return null;
    });
    if (!viewer) { button.disabled = false; return; }
  }
  const key = randomKey(); // one per click; a retried send of this click reuses it
  try {
    let answer = null;
    for (let attempt = 0; attempt < 3 && !answer; attempt++) {
      try {
        answer = await api("POST", `/api/shows/${show}/coupons/${coupon.id}/claim`,
          { token: viewer.token, headers: { "Idempotency-Key": key } });
      } catch (e) {
        if (e.status !== 0 && e.status !== 503) throw e;
        await sleep(1000);
      }
    }
    if (!answer) throw new Error("Could not reach the shop. Try again.");
    result.textContent = RESULTS[answer.result] || answer.result;
    result.dataset.result = answer.result;
    // Claimed, already claimed, sold out...: another tap would change nothing.
    if (answer.result !== "not_started") decided.add(coupon.id);
    couponChanged({ id: coupon.id, remaining: answer.remaining });
  } catch (e) {
    result.textContent = e.message;
    result.dataset.result = "error";
    button.disabled = false; // could not reach the shop: try again
  }
}

function followEvents() {
  let last = null;
  let retry = 2000;
  const path = `/events/${show}${room === "hq" ? "" : `/${room}`}`;
  const open = () => {
    const query = new URLSearchParams();
    if (last !== null) query.set("last_event_id", last);
    // (Always with the viewer's token when there is one: it sees its own held comments.)
    if (viewer?.token) query.set("token", viewer.token);
    const source = new EventSource(`${path}?${query}`);
    source.onopen = () => {
      retry = 2000;
      $("#watch").dataset.events = "open"; // (tests wait on it before writing to the room)
    };
    const on = (type, handle) => source.addEventListener(type, (ev) => {
      last = Number(ev.lastEventId);
      handle(JSON.parse(ev.data));
    });
    on("product.pinned", (e) => showCard(e.product));
    on("product.unpinned", () => { $("#card").hidden = true; });
    on("sale", showSale);
    for (const type of ["coupon.launched", "coupon.updated", "coupon.ended"]) on(type, (e) => couponChanged(e.coupon));
    for (const type of ["show.live", "show.host_reconnecting", "show.ended"]) on(type, () => refreshStatus());
    on("server.stopping", () => { $("#badge").textContent = "Reconnecting…"; });
    on("comment", chat.comment);
    on("comment.deleted", chat.deleted);
    on("comment.pinned", chat.pinned);
    on("comment.unpinned", chat.unpinned);
    on("likes", chat.likes);
    for (const type of ["shelf.updated"]) on(type, () => {});
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) { // the server answered with an error: try again later
        setTimeout(open, retry * (0.8 + 0.4 * Math.random()));
        retry = Math.min(retry * 2, 60000);
      }
    };
  };
  open();
}

async function main() {
  for (;;) { // an unknown show or a server that is down: keep trying quietly
    await refreshStatus();
    if (status) break;
    await sleep(3000);
  }
  viewer = await identify().catch(() => null); // tried again at the first claim
  followEvents();
  followStatus();
  followMedia();
}
main();
