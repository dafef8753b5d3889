// The replay page: /replay/{show}. Plays the MP4 (or the HLS playlist while the MP4 is being
// made, where the browser plays HLS), with the product chapters beside it; a chapter seeks there.
import { $, api, showError, sleep } from "/static/common.js";

const [, , show] = location.pathname.split("/");
const video = $("#video");
const STATES = { recording: "Live now: recording", processing: "Preparing the replay…", ready: "Replay", failed: "Unavailable" };

function clock(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  return `${h ? `${h}:` : ""}${mm}:${String(s % 60).padStart(2, "0")}`;
}

function renderChapters(chapters) {
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
    list.append(li);
  }
}

video.addEventListener("timeupdate", () => {
  const buttons = [...document.querySelectorAll("#chapters button")];
  let active = null;
  for (const b of buttons) if (Number(b.dataset.start) <= video.currentTime + 0.25) active = b;
  for (const b of buttons) b.setAttribute("aria-current", String(b === active));
});

async function main() {
  const status = await api("GET", `/api/shows/${show}/status`).catch(() => null);
  if (status) {
    $("#title").textContent = `${status.title} · Replay`;
    document.title = `${status.title} · Replay`;
  }
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
      renderChapters(info.chapters);
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
