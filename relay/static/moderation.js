// The ops page's comments panel: the comments held for review (Release / Delete / Mute), the
// comment stream of every room of the show (Pin / Delete / Mute), and the word lists shared by all
// shows. The admin listing is read on the page's own refresh, only what is new each time (after=).
import { $ } from "/static/common.js";

const MAX_STREAM = 200; // rows kept in the stream: the operator reads the newest

/** `call(method, path, body)` is the page's admin API call, `act(fn)` runs an action showing its error. */
export function setUpModeration({ call, act, cell, button }) {
  let show = null;
  let after = 0; // the highest comment id read
  let available = true; // false once the server says it has no comments API
  const held = new Map(); // id -> comment waiting for review

  const duration = () => Number($("#mute-duration").value);

  function actions(showId, c, { release = false, pin = false } = {}) {
    const td = document.createElement("td");
    td.className = "actions";
    const what = `${c.name}: ${c.text}`;
    const base = `/api/shows/${showId}/comments/${c.id}`;
    if (release) {
      td.append(button("Release", async () => {
        await call("POST", `${base}/release`);
        settle(c.id, "published");
      }, { aria: `Release ${what}` }));
    }
    if (pin) {
      td.append(button("Pin", () => call("POST", `${base}/pin`), { secondary: true, aria: `Pin ${what}` }));
    }
    td.append(button("Delete", async () => {
      await call("DELETE", base);
      settle(c.id, "deleted");
    }, { secondary: true, aria: `Delete ${what}` }));
    if (c.viewer_id) {
      td.append(button("Mute", async () => {
        await call("POST", `/api/shows/${showId}/viewers/${encodeURIComponent(c.viewer_id)}/mute`,
          { duration_s: duration() });
        $("#moderation-note").textContent = duration() ? `${c.name} is muted.` : `${c.name} may comment again.`;
      }, { secondary: true, aria: `Mute ${c.name}` }));
    }
    return td;
  }

  /** A comment this page released or deleted: out of the held list, its stream row updated. */
  function settle(id, status) {
    held.delete(id);
    renderHeld();
    const row = $(`#comment-stream tr[data-id="${id}"]`);
    if (row) {
      row.dataset.status = status;
      row.cells[2].textContent = status;
    }
  }

  function renderHeld() {
    const body = $("#held");
    body.replaceChildren();
    for (const c of held.values()) {
      const tr = document.createElement("tr");
      tr.dataset.id = c.id;
      tr.append(cell(c.room), cell(`${c.name}: ${c.text}`, "said"), actions(show, c, { release: true }));
      body.append(tr);
    }
    $("#no-held").hidden = held.size > 0;
  }

  function addToStream(c) {
    const body = $("#comment-stream");
    body.querySelector(`tr[data-id="${c.id}"]`)?.remove();
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    tr.dataset.room = c.room;
    tr.dataset.status = c.status;
    const live = c.status !== "deleted" && c.status !== "held";
    tr.append(cell(c.room), cell(`${c.name}: ${c.text}`, "said"), cell(c.status),
      c.status === "deleted" ? cell("") : actions(show, c, { pin: live }));
    body.prepend(tr); // newest first
    while (body.rows.length > MAX_STREAM) body.lastElementChild.remove();
  }

  /** Read the comments written since the last read (every room of `showId`). */
  async function refresh(showId) {
    if (showId !== show) { // another show: start over
      show = showId;
      after = 0;
      held.clear();
      $("#comment-stream").replaceChildren();
      renderHeld();
    }
    if (!available || !showId) return;
    for (let pages = 0; pages < 10; pages++) { // (a long backlog is read over a few refreshes)
      let page;
      try {
        page = await call("GET", `/api/shows/${showId}/comments?after=${after}`);
      } catch (e) {
        if (e.status === 404 && e.code !== "show_not_found") { // a server without comments: hide the panel
          available = false;
          $("#moderation").hidden = true;
          return;
        }
        throw e;
      }
      if (showId !== show) return;
      const comments = page.comments ?? [];
      for (const c of comments) {
        after = Math.max(after, c.id);
        if (c.status === "held") held.set(c.id, c);
        addToStream(c);
      }
      renderHeld();
      if (!comments.length) return;
    }
  }

  // -- the word lists (every show) --------------------------------------------------------------
  const words = (text) => text.split(/[\n,]/).map((w) => w.trim()).filter(Boolean);

  async function loadLists() {
    let lists;
    try {
      lists = await call("GET", "/api/moderation");
    } catch (e) {
      $("#moderation-lists").hidden = true; // (a server without moderation)
      return;
    }
    $("#moderation-lists").hidden = false;
    $("#block-words").value = (lists.block ?? []).join("\n");
    $("#mask-words").value = (lists.mask ?? []).join("\n");
    $("#hold-links").checked = !!lists.hold_links;
  }

  $("#moderation-lists").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const saved = await call("PUT", "/api/moderation", {
        block: words($("#block-words").value), mask: words($("#mask-words").value),
        hold_links: $("#hold-links").checked,
      });
      $("#moderation-saved").textContent = "Saved.";
      setTimeout(() => { $("#moderation-saved").textContent = ""; }, 2000);
      if (saved?.block) { // what the server kept (normalised)
        $("#block-words").value = saved.block.join("\n");
        $("#mask-words").value = (saved.mask ?? []).join("\n");
      }
    });
  });

  return { refresh, loadLists };
}
