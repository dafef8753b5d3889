// The ops page: /ops. Create shows and distributors, stock the shelf, pin the card, run flash
// coupons, restream to other platforms, and watch the live figures and sales per room, refreshed
// every two seconds.
import { $, api, ApiError, money, showError, sleep } from "/static/common.js";
import { setUpModeration } from "/static/moderation.js";

let adminKey = sessionStorage.getItem("livecast.admin") || "";
let current = null; // the selected show id
const error = $("#error");

const call = (method, path, body) => api(method, path, { body, token: adminKey });

/** Run an operator action: its error (the API's message) is shown, never thrown. */
async function act(action) {
  showError(error, null);
  try {
    return await action();
  } catch (e) {
    showError(error, e);
    if (e instanceof ApiError && e.status === 401) signOut();
    return null;
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function button(label, onClick, { secondary = false, aria } = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (secondary) b.className = "secondary";
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", () => act(onClick));
  return b;
}

function copyButton(text, what) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "secondary";
  b.textContent = "Copy";
  b.setAttribute("aria-label", `Copy ${what}`);
  b.addEventListener("click", async () => {
    await navigator.clipboard?.writeText(text).catch(() => {});
    b.textContent = "Copied";
    setTimeout(() => { b.textContent = "Copy"; }, 1500);
  });
  return b;
}

const moderation = setUpModeration({ call, act, cell, button });

document.addEventListener("click", async (ev) => {
  const target = ev.target.closest("[data-copy]");
  if (!target) return;
  await navigator.clipboard?.writeText($(target.dataset.copy).textContent).catch(() => {});
  const label = target.textContent;
  target.textContent = "Copied";
  setTimeout(() => { target.textContent = label; }, 1500);
});

// -- sign in ------------------------------------------------------------------------------------
function signOut() {
  adminKey = "";
  sessionStorage.removeItem("livecast.admin");
  $("#console").hidden = true;
  $("#signin").hidden = false;
  $("#sign-out").hidden = true;
}

async function signIn(key) {
  adminKey = key;
  const shows = await act(() => call("GET", "/api/shows"));
  if (!shows) return;
  sessionStorage.setItem("livecast.admin", key);
  $("#signin").hidden = true;
  $("#console").hidden = false;
  $("#sign-out").hidden = false;
  fillShows(shows.shows);
  moderation.loadLists();
}

$("#signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("#admin-key").value.trim());
});
$("#sign-out").addEventListener("click", signOut);

// -- shows --------------------------------------------------------------------------------------
const showLabel = (s) => `${s.title} (${s.id}, ${s.state})`;

function fillShows(shows, select) {
  const list = $("#show-select");
  list.length = 0;
  list.add(new Option("Choose a show…", ""));
  for (const s of shows) list.add(new Option(showLabel(s), s.id));
  const wanted = select ?? current ?? new URLSearchParams(location.search).get("show");
  if (wanted && shows.some((s) => s.id === wanted)) list.value = wanted;
  choose(list.value || null);
}

$("#show-select").addEventListener("change", (ev) => choose(ev.target.value || null));

$("#create-show").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const body = { title: $("#show-title").value.trim() };
    if ($("#show-id").value.trim()) body.id = $("#show-id").value.trim();
    const show = await call("POST", "/api/shows", body);
    $("#new-key").hidden = false;
    $("#new-key-show").textContent = show.title;
    $("#new-key-value").textContent = show.stream_key;
    // A server with RTMP ingest gives an encoder's server and stream key too.
    $("#new-rtmp-key").hidden = !show.rtmp_stream_key;
    $("#new-rtmp-url").textContent = show.rtmp_url || "";
    $("#new-rtmp-key-value").textContent = show.rtmp_stream_key || "";
    ev.target.reset();
    fillShows((await call("GET", "/api/shows")).shows, show.id);
  });
});

function choose(showId) {
  current = showId;
  $("#show-panel").hidden = !showId;
  if (showId) {
    history.replaceState(null, "", `/ops?show=${encodeURIComponent(showId)}`);
    refresh();
  }
}

$("#end-show").addEventListener("click", () => act(async () => {
  if (!confirm("End the show for every viewer?")) return;
  await call("POST", `/api/shows/${current}/end`);
  await refresh();
}));

// -- one show: rooms, figures, shelf, coupons ---------------------------------------------------
let shown = "";
async function refresh() {
  const showId = current;
  if (!showId || !adminKey) return;
  // (The comments of every room: only the new ones each time; a server without them hides the panel.)
  moderation.refresh(showId).catch((e) => showError(error, e));
  const [show, stats, shelf, coupons, restreams] = await Promise.all([
    call("GET", `/api/shows/${showId}`),
    call("GET", `/api/shows/${showId}/stats`),
    call("GET", `/api/shows/${showId}/products`),
    call("GET", `/api/shows/${showId}/coupons`),
    call("GET", `/api/shows/${showId}/restreams`).catch(() => null), // (a server without restreaming)
  ]);
  if (showId !== current) return;
  if (restreams) showRestreams(showId, restreams.restreams); // (their bytes change every time: in place)
  const option = [...$("#show-select").options].find((o) => o.value === showId);
  if (option) option.textContent = showLabel(show); // scheduled -> live -> ended as it happens
  // Rebuild only when something changed: focus, clicks and "Copied" survive the 2 s refresh.
  const { tracks, keyframe_requests, publisher, ...stable } = show;
  const fingerprint = JSON.stringify([stable, !!publisher, stats.rooms, shelf, coupons]);
  if (fingerprint === shown) return;
  shown = fingerprint;
  $("#show-name").textContent = show.title;
  $("#show-state").textContent = show.state === "live" && !show.publisher ? "host reconnecting" : show.state;
  $("#show-state").classList.toggle("live", show.state === "live");
  const studio = new URL(`/studio/${show.id}`, location.href).toString();
  $("#studio-link").href = studio;
  $("#studio-link").textContent = studio;
  $("#whip-url").textContent = show.whip_url;
  $("#rtmp-server").hidden = !show.rtmp_url;
  $("#rtmp-url").textContent = show.rtmp_url || "";
  // (The key holds the show's stream key: the API gives it with that key, once.)
  $("#rtmp-key").textContent = show.rtmp_stream_key || "given once, with the show's stream key";
  $("#copy-rtmp-key").hidden = !show.rtmp_stream_key;
  $("#end-show").disabled = show.state === "ended";

  const rooms = $("#rooms");
  rooms.replaceChildren();
  const sales = $("#sales");
  sales.replaceChildren();
  const names = { hq: "HQ" };
  for (const m of show.mirrors) names[m.distributor] = m.name;
  const links = { hq: show.watch_url };
  for (const m of show.mirrors) links[m.distributor] = m.watch_url;
  for (const [room, f] of Object.entries(stats.rooms)) {
    const tr = document.createElement("tr");
    tr.dataset.room = room;
    // The link's Copy button sits under the room's name: the table fits a phone's width.
    const name = cell(names[room] || room);
    name.append(document.createElement("br"), copyButton(links[room], `the watch link of ${names[room] || room}`));
    tr.append(name, cell(f.viewers, "num"), cell(f.peak_viewers, "num"),
      cell(f.unique_viewers, "num"), cell(f.claims, "num"));
    rooms.append(tr);
    sales.append(salesRow(room, names[room] || room, f, show.currency));
  }
  // A server without orders sends none of these figures: no table of zeros then.
  $("#sales-table").hidden = !Object.values(stats.rooms).some((f) => "orders" in f);

  const products = $("#products");
  products.replaceChildren();
  for (const p of shelf.products) {
    const tr = document.createElement("tr");
    tr.dataset.product = p.id;
    const pinned = shelf.pinned === p.id;
    const card = document.createElement("td");
    card.append(pinned
      ? button("Unpin", () => call("POST", `/api/shows/${showId}/unpin`).then(refresh), { aria: `Unpin ${p.title}` })
      : button("Pin", () => call("POST", `/api/shows/${showId}/products/${p.id}/pin`).then(refresh),
        { secondary: true, aria: `Pin ${p.title}` }));
    const remove = document.createElement("td");
    remove.append(button("Remove", () => call("DELETE", `/api/shows/${showId}/products/${p.id}`).then(refresh),
      { secondary: true, aria: `Remove ${p.title}` }));
    const name = cell(p.title);
    if (pinned) {
      const tag = document.createElement("span");
      tag.className = "pinned";
      tag.textContent = "on card";
      name.append(tag);
    }
    tr.append(name, cell(money(p.price), "num"), card, remove);
    products.append(tr);
  }

  const list = $("#coupons");
  list.replaceChildren();
  for (const c of coupons.coupons) {
    const tr = document.createElement("tr");
    tr.dataset.coupon = c.id;
    const actions = document.createElement("td");
    if (c.state === "draft") {
      actions.append(button("Launch", () => call("POST", `/api/shows/${showId}/coupons/${c.id}/launch`).then(refresh),
        { aria: `Launch ${c.title}` }));
    } else if (c.state !== "ended") {
      actions.append(button("Stop", () => call("POST", `/api/shows/${showId}/coupons/${c.id}/stop`).then(refresh),
        { secondary: true, aria: `Stop ${c.title}` }));
    }
    tr.append(cell(c.title), cell(c.state), cell(c.claimed, "num"), cell(c.remaining, "num"), actions);
    list.append(tr);
  }
}

/** A room's sales: GMV, orders, buyers, conversion and the distributor's commission. */
function salesRow(room, name, f, currency) {
  const tr = document.createElement("tr");
  tr.dataset.room = room;
  const amount = (value) => { // "12.30" from the server
    const n = Number(value ?? 0);
    return Number.isFinite(n) ? money(n, currency) : String(value);
  };
  const conversion = typeof f.conversion === "number" ? `${(f.conversion * 100).toFixed(1)}%` : "";
  const figures = { gmv: amount(f.gmv), orders: f.orders ?? 0, buyers: f.buyers ?? 0, conversion,
    commission: amount(f.commission) };
  tr.append(cell(name));
  for (const [figure, text] of Object.entries(figures)) {
    const td = cell(text, "num");
    td.dataset.figure = figure;
    tr.append(td);
  }
  return tr;
}

// -- restream targets: updated in place, so a Remove button stays under the pointer -------------
const STATES = { waiting: "waiting for the show", connecting: "connecting", live: "live", retrying: "retrying",
  failed: "failed" };

function bytes(n) {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

function showRestreams(showId, targets) {
  const body = $("#restreams");
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.restream, tr]));
  for (const t of targets) {
    let tr = rows.get(t.id);
    rows.delete(t.id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.restream = t.id;
      const remove = document.createElement("td");
      remove.append(button("Remove", async () => {
        if (!confirm(`Stop pushing to ${t.name} and remove it?`)) return;
        await call("DELETE", `/api/shows/${showId}/restreams/${t.id}`);
        await refresh();
      }, { secondary: true, aria: `Remove ${t.name}` }));
      tr.append(cell(t.name), cell(t.url), cell(""), cell("", "num"), cell(""), remove);
    }
    body.append(tr); // (in the server's order)
    const [, , state, sent, error] = tr.cells;
    state.dataset.state = t.state;
    state.textContent = `${STATES[t.state] || t.state} since ${new Date(t.since * 1000).toLocaleTimeString()}`;
    sent.textContent = bytes(t.bytes_sent);
    error.textContent = t.last_error || "";
  }
  for (const tr of rows.values()) tr.remove();
}

$("#add-restream").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    await call("POST", `/api/shows/${current}/restreams`, {
      name: $("#restream-name").value.trim(), url: $("#restream-url").value.trim(),
    });
    ev.target.reset(); // (the key leaves the page with the form)
    await refresh();
  });
});

$("#add-mirror").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const body = { distributor: $("#mirror-id").value.trim(), name: $("#mirror-name").value.trim() };
    if ($("#mirror-rate").value.trim()) body.commission_rate = $("#mirror-rate").value.trim();
    await call("POST", `/api/shows/${current}/mirrors`, body);
    ev.target.reset();
    await refresh();
  });
});

$("#add-product").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const body = { title: $("#product-title").value.trim(), price: $("#product-price").value.trim() };
    if ($("#product-link").value.trim()) body.link = $("#product-link").value.trim();
    if ($("#product-image").value.trim()) body.image_url = $("#product-image").value.trim();
    await call("POST", `/api/shows/${current}/products`, body);
    ev.target.reset();
    await refresh();
  });
});

$("#add-coupon").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    await call("POST", `/api/shows/${current}/coupons`, {
      title: $("#coupon-title").value.trim(),
      quantity: Number($("#coupon-quantity").value),
      duration_s: Number($("#coupon-duration").value),
      per_viewer_limit: Number($("#coupon-limit").value || 1),
    });
    ev.target.reset();
    await refresh();
  });
});

async function poll() {
  for (;;) {
    await sleep(2000);
    if (current && adminKey) await refresh().catch((e) => showError(error, e));
  }
}

if (adminKey) signIn(adminKey);
poll();
