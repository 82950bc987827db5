// Renders this server's OpenAPI spec as a readable reference, without any CDN.
"use strict";

(async () => {
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${spec.info.title} API ${spec.info.version}`;
  const host = location.host;
  document.querySelectorAll("pre").forEach((p) => (p.textContent = p.textContent.replaceAll("HOST", host)));
  const resolve = (s) => (s && s.$ref ? spec.components.schemas[s.$ref.split("/").pop()] : s);
  const main = document.getElementById("ops");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const card = el("section", "card op");
      const head = el("div", "op-head");
      head.append(el("span", `method ${method}`, method.toUpperCase()), el("span", "path", path));
      card.append(head, el("p", "", op.summary || op.description || ""));
      if (op.parameters && op.parameters.length) {
        const t = el("table");
        t.append(Object.assign(el("tr"), { innerHTML: "<th>parameter</th><th>in</th><th>type</th><th>description</th>" }));
        for (const p of op.parameters) {
          const tr = el("tr");
          const s = p.schema || {};
          const range = [s.minimum !== undefined ? `≥ ${s.minimum}` : "", s.maximum !== undefined ? `≤ ${s.maximum}` : ""].filter(Boolean).join(", ");
          tr.append(el("td", "", p.name), el("td", "", p.in), el("td", "", `${s.type || ""}${s.default !== undefined ? ` = ${s.default}` : ""}${range ? ` (${range})` : ""}`), el("td", "", p.description || ""));
          t.append(tr);
        }
        card.append(t);
      }
      if (op.requestBody) {
        const d = el("details");
        d.append(el("summary", "", `request body: ${Object.keys(op.requestBody.content).join(", ")}`));
        d.append(el("pre", "", JSON.stringify(op.requestBody.content, null, 2)));
        card.append(d);
      }
      const t = el("table");
      t.append(Object.assign(el("tr"), { innerHTML: "<th>status</th><th>meaning</th>" }));
      for (const [code, r] of Object.entries(op.responses || {})) {
        const tr = el("tr");
        tr.append(el("td", "", code), el("td", "", r.description || ""));
        t.append(tr);
      }
      card.append(t);
      const ok = op.responses && op.responses["200"] && op.responses["200"].content && op.responses["200"].content["application/json"];
      const schema = ok && resolve(ok.schema);
      if (schema && schema.properties) {
        const d = el("details");
        d.append(el("summary", "", "response schema"));
        d.append(el("pre", "", JSON.stringify(schema, null, 2)));
        card.append(d);
      }
      main.append(card);
    }
  }
})();
