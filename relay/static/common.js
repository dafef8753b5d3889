// Shared by the pages: API calls with readable errors, WHIP/WHEP sessions, small helpers.

/** An API error with the server's message ({"error", "message"} bodies). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call the API; JSON in, JSON out; throws ApiError with the server's message. */
export async function api(method, path, { body, token, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    throw new ApiError(res.status, data?.error || "error", data?.message || `${res.status} ${res.statusText}`);
  }
  return data;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Show `error` (or clear with null) in the element, which should have role="alert". */
export function showError(el, error) {
  el.textContent = error ? error.message || String(error) : "";
}

/** A price with its currency's symbol (CNY shows as ¥). */
export function money(value, currency = "CNY") {
  if (typeof value !== "number") return "";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency, currencyDisplay: "narrowSymbol" })
      .format(value);
  } catch {
    return `${value.toFixed(2)} ${currency}`;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function randomKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/** Wait until ICE gathering completes (the relay takes no trickle ICE), at most `ms`. */
function gathered(pc, ms = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

/** POST the peer's offer to a WHIP or WHEP URL; returns the session URL (Location). */
async function exchange(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const headers = { "Content-Type": "application/sdp" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(url, { method: "POST", headers, body: pc.localDescription.sdp });
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.");
  }
  if (res.status !== 201) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error || "error", data?.message || `${res.status} ${res.statusText}`);
  }
  // (res.url: where a 307 from a full node of a cluster led)
  const location = new URL(res.headers.get("Location"), res.url || new URL(url, window.location.href)).toString();
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  return location;
}

/** Play a WHEP URL into `video` (with a viewer token when the show needs one); returns {pc, location}. */
export async function whepPlay(url, video, token) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    video.srcObject = stream;
  });
  try {
    return { pc, location: await exchange(pc, url, token) };
  } catch (e) {
    pc.close();
    throw e;
  }
}

/** Publish `stream` to a WHIP URL with the stream key; returns {pc, location}. */
export async function whipPublish(url, key, stream) {
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  try {
    return { pc, location: await exchange(pc, url, key) };
  } catch (e) {
    pc.close();
    throw e;
  }
}

/** End a WHIP/WHEP session; a failure is not worth reporting (the server reaps it anyway). */
export async function endSession(location, token) {
  if (!location) return;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  await fetch(location, { method: "DELETE", headers }).catch(() => {});
}

/** Resolves when the peer connection has failed or closed, or stayed disconnected for `graceMs`. */
export function connectionLost(pc, graceMs = 4000) {
  return new Promise((resolve) => {
    let timer = null;
    const check = () => {
      const state = pc.connectionState;
      if (state === "failed" || state === "closed") resolve(state);
      else if (state === "disconnected") timer ??= setTimeout(() => resolve("disconnected"), graceMs);
      else if (timer) { clearTimeout(timer); timer = null; }
    };
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

// -- viewers and attribution: shared by the watch and replay pages ---------------------------

/** Where the pages keep their viewer of a show: one per show (credit stays with the first room);
 * a token the brand gave for a room (token playback) under that room. */
export const viewerKey = (show, tokenRoom) => `livecast.viewer.${show}${tokenRoom ? `.${tokenRoom}` : ""}`;

/** What a token says of itself (unverified: only to show the viewer whose it is). */
export function describeToken(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return { who: claims.sub, room: claims.room };
  } catch {
    return null;
  }
}

/** The viewer kept under `key` ({viewer_id?, room?, token}), or null. */
export function storedViewer(key) {
  try {
    return JSON.parse(localStorage.getItem(key) || "null");
  } catch {
    return null;
  }
}

/** The viewer kept under `key`, else a new one registered in `room`. `ref` (a sharer) is sent
 * unless it is this viewer itself (its own share link is no invite); a viewer already kept with a
 * new sharer registers again with its token to record it. Throws only when there is none at all. */
export async function rememberedViewer(show, room, ref, key) {
  const prior = storedViewer(key);
  const sharer = ref && ref !== (prior?.viewer_id ?? describeToken(prior?.token ?? "")?.who) ? ref : null;
  if (prior && !sharer) return prior;
  try {
    const body = { room, ...(sharer ? { ref: sharer } : {}) };
    const fresh = await api("POST", `/api/shows/${show}/viewers`, { body, token: prior?.token });
    localStorage.setItem(key, JSON.stringify(fresh));
    return fresh;
  } catch (e) {
    if (prior) return prior; // keep the one held; what it may not do is said where it is used
    throw e;
  }
}

/** A product's link with the attribution added as lc_attr (its own query and fragment kept);
 * the link as it is without an attribution or when it is no URL. */
export function attributedLink(link, attribution) {
  if (!attribution) return link;
  try {
    const url = new URL(link, location.href);
    url.searchParams.set("lc_attr", attribution);
    return url.toString();
  } catch {
    return link;
  }
}
