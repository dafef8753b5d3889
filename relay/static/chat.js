// The watch page's comments and likes: the room's comments over the lower part of the video
// (newest at the bottom), the comment box, the pinned comment, and the like button with its
// floating hearts. Server text goes into the page through textContent only.
import { $, api } from "/static/common.js";

const MAX_SHOWN = 50; // older lines are out of sight anyway (the list fades upwards)
const LIKE_EVERY_MS = 500; // taps are batched: one request per half second at most
const LIKE_MAX = 50; // the API's largest count per request

/** The chat of `show` in `room`; `viewer()` gives the viewer ({token}) or null, `identify()` gets one. */
export function setUpChat({ show, viewer, identify }) {
  const list = $("#comments");
  const note = $("#comment-note");
  let noteTimer = null;

  function say(text, ms = 3000) {
    note.textContent = text;
    note.hidden = false;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(() => { note.hidden = true; }, ms);
  }

  /** The comment's line, made or updated (the page's own comment comes back on the stream). */
  function line(comment, { mine = false } = {}) {
    let li = list.querySelector(`li[data-id="${CSS.escape(String(comment.id))}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.id = comment.id;
      const name = document.createElement("b");
      const text = document.createElement("span");
      li.append(name, text);
      list.append(li);
      while (list.children.length > MAX_SHOWN) list.firstElementChild.remove();
    }
    const [name, text] = li.children;
    if (comment.name) name.textContent = comment.name;
    else if (!name.textContent) name.textContent = mine ? "You" : "Viewer";
    if (comment.text !== undefined) text.textContent = comment.text; // (masked words come starred)
    return li;
  }

  // -- sending ---------------------------------------------------------------------------------
  const form = $("#comment-form");
  const input = $("#comment-text");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const who = viewer() ?? await identify().catch(() => null);
    if (!who?.token) { say("Comments are not available right now."); return; }
    form.querySelector("button").disabled = true;
    try {
      const sent = await api("POST", `/api/shows/${show}/comments`, { token: who.token, body: { text } });
      input.value = "";
      // Shown at once; the stream brings it again (same id) with the name the room sees.
      line({ id: sent.id, text: sent.text ?? text }, { mine: true });
    } catch (e) {
      if (e.status === 429) say("Slow down: wait a moment before the next comment.");
      else if (e.status === 409) say("The show has ended: comments are closed.");
      else if (e.status === 404) say("Comments are not available for this show.");
      else say(e.message);
    } finally {
      form.querySelector("button").disabled = false;
    }
  });

  // -- likes -----------------------------------------------------------------------------------
  const likeButton = $("#like");
  const total = $("#likes");
  let shownTotal = 0;
  let pending = 0; // taps not sent yet
  let sending = null; // the timer of the next send

  function showTotal(n) {
    shownTotal = n;
    total.textContent = n > 0 ? compact(n) : "";
  }

  function heart() {
    const h = document.createElement("span");
    h.className = "heart";
    h.textContent = "♥";
    h.setAttribute("aria-hidden", "true");
    h.style.setProperty("--drift", `${Math.round((Math.random() - 0.5) * 60)}px`); // (CSSOM: allowed by the CSP)
    h.style.setProperty("--hue", `${Math.round(Math.random() * 50) - 25}deg`);
    h.addEventListener("animationend", () => h.remove());
    $("#hearts").append(h);
  }

  async function flush() {
    sending = null;
    const count = Math.min(pending, LIKE_MAX);
    if (!count) return;
    pending -= count;
    const who = viewer() ?? await identify().catch(() => null);
    if (who?.token) {
      // A like lost to a 429 or a network blip is not worth a retry or a message.
      await api("POST", `/api/shows/${show}/likes`, { token: who.token, body: { count } }).catch(() => {});
    }
    if (pending) sending = setTimeout(flush, LIKE_EVERY_MS);
  }

  likeButton.addEventListener("click", () => {
    pending += 1;
    heart();
    showTotal(shownTotal + 1); // at once; the room's own total follows from the stream
    sending ??= setTimeout(flush, LIKE_EVERY_MS);
  });

  // -- events of the room's stream --------------------------------------------------------------
  const pinned = $("#pinned-comment");
  function pin(comment) {
    if (!comment?.id) { pinned.hidden = true; return; }
    pinned.dataset.id = comment.id;
    $("#pinned-name").textContent = comment.name || "";
    $("#pinned-text").textContent = comment.text || "";
    pinned.hidden = false;
  }

  return {
    comment: (e) => line(e.comment),
    deleted: (e) => {
      const id = String(e.comment?.id);
      list.querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
      if (pinned.dataset.id === id) pinned.hidden = true;
    },
    pinned: (e) => pin(e.comment),
    unpinned: () => pin(null),
    likes: (e) => { if (typeof e.likes === "number") showTotal(Math.max(e.likes, 0)); },
  };
}

/** 1234 -> "1.2K": the like count fits its small pill. */
function compact(n) {
  try {
    return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(n);
  } catch {
    return String(n);
  }
}
