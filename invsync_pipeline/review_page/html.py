"""The review page's HTML: server-rendered, every value escaped, readable on a phone.

No JavaScript and no template engine: a supervisor on a 390-pixel screen in the warehouse gets
cards instead of wide tables, and forms that work without scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

_CSS = """
*{box-sizing:border-box}body{margin:0;font:16px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:#1d2430;background:#f3f5f8}header{background:#1f3a5f;color:#fff;padding:.7rem 1rem}
header a{color:#fff;text-decoration:none;font-weight:600}main{max-width:60rem;margin:0 auto;padding:.8rem}
.card{background:#fff;border-radius:.5rem;padding:.8rem;margin:.6rem 0;box-shadow:0 1px 2px #0002}
.card h2{font-size:1.05rem;margin:.1rem 0 .4rem}.id{font-family:ui-monospace,monospace;font-size:.8rem;
word-break:break-all;color:#4a5568}.badge{display:inline-block;border-radius:1rem;padding:0 .55rem;
font-size:.8rem;font-weight:600;background:#e2e8f0}.critical{background:#fde2e1;color:#9b1c1c}
.approved{background:#dcfce7;color:#166534}.rejected,.resolved{background:#e2e8f0}
.held_for_review{background:#fef3c7;color:#92400e}dl{display:grid;grid-template-columns:max-content 1fr;
gap:.15rem .8rem;margin:.3rem 0}dt{color:#4a5568}dd{margin:0;word-break:break-word}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #e2e8f0;white-space:nowrap}
form.filters{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.5rem}
label{display:block;font-size:.85rem;color:#4a5568}select,input,textarea{width:100%;font:inherit;
padding:.45rem;border:1px solid #cbd5e0;border-radius:.35rem;background:#fff}
button{font:inherit;font-weight:600;border:0;border-radius:.35rem;padding:.6rem 1rem;cursor:pointer;
background:#1f3a5f;color:#fff}button.reject{background:#9b1c1c}.actions{display:flex;gap:.6rem;
flex-wrap:wrap;margin-top:.6rem}.error{background:#fde2e1;color:#9b1c1c;padding:.6rem;border-radius:.35rem}
a.item{color:inherit;text-decoration:none;display:block}.muted{color:#718096;font-size:.85rem}
"""


def e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute; None shows as an em dash."""
    return "—" if value is None else escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · invsync review</title><style>{_CSS}</style></head><body>"
        '<header><a href="/">invsync · review queue</a></header>'
        f"<main>{body}</main></body></html>"
    )


def _age(held_at: str, now: datetime) -> str:
    hours = (now - datetime.fromisoformat(held_at)).total_seconds() / 3600
    return f"{hours:.0f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def _status(item: Mapping) -> str:
    status = item["status"]
    label = status.replace("_", " ")
    if status == "approved":
        label = "approved · applied" if item["applied_at"] else "approved · waiting for the next run"
    return f'<span class="badge {e(status)}">{e(label)}</span>'


def _select(name: str, label: str, options: Iterable[tuple[str, str]], chosen: str | None) -> str:
    opts = "".join(
        f'<option value="{e(v)}"{" selected" if v == (chosen or "") else ""}>{e(text)}</option>' for v, text in options
    )
    return f'<label>{e(label)}<select name="{e(name)}">{opts}</select></label>'


def queue_page(items: list[dict], choices: Mapping[str, list[str]], chosen: Mapping[str, str | None]) -> str:
    now = datetime.now(UTC)
    any_ = [("", "any")]
    ages = [("", "any age"), ("1", "held ≥ 1 h"), ("4", "held ≥ 4 h"), ("24", "held ≥ 1 day")]
    statuses = [("held_for_review", "waiting"), ("approved", "approved"), ("rejected", "rejected"),
                ("resolved", "resolved"), ("all", "all")]  # fmt: skip
    filters = (
        '<form class="filters card" method="get" action="/">'
        + _select("plant", "Plant", any_ + [(p, p) for p in choices["plant"]], chosen.get("plant"))
        + _select(
            "material_type",
            "Material type",
            any_ + [(t, t) for t in choices["material_type"]],
            chosen.get("material_type"),
        )  # fmt: skip
        + _select("cause", "Cause", any_ + [(c, c.replace("_", " ")) for c in choices["cause"]], chosen.get("cause"))
        + _select("age", "Age", ages, chosen.get("age"))
        + _select("status", "Status", statuses, chosen.get("status") or "held_for_review")
        + '<div><label>&nbsp;</label><button type="submit">Filter</button></div></form>'
    )
    cards = []
    for item in items:
        critical = '<span class="badge critical">critical</span> ' if item["critical"] else ""
        cards.append(
            f'<div class="card"><a class="item" href="/items/{quote(item["correction_id"], safe="")}">'
            f"<h2>{e(item['material_number'])} at {e(item['location'])}</h2>"
            f'<p>{critical}{_status(item)} <span class="badge">{e(item["cause"].replace("_", " "))}</span></p>'
            f"<dl><dt>Proposed</dt><dd>{e(item['target_system'])} {e(_signed(item['quantity']))} {e(item['unit'])}"
            f" ({e(item['method'])})</dd><dt>Value</dt><dd>{e(item['value'])}</dd>"
            f"<dt>Hour</dt><dd>{e(_hour(item['partition_hour']))}</dd><dt>Waiting</dt>"
            f"<dd>{e(_age(item['held_at'], now))}</dd></dl>"
            f'<div class="id">{e(item["correction_id"])}</div></a></div>'
        )
    listing = "".join(cards) or '<div class="card">Nothing here: no item matches these filters.</div>'
    return page("queue", f'{filters}<p class="muted">{len(items)} item(s)</p>{listing}')


def _signed(quantity: str) -> str:
    return quantity if quantity.startswith("-") else f"+{quantity}"


def _hour(text: str) -> str:
    return f"{datetime.fromisoformat(text):%Y-%m-%d %H:00} UTC"


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return '<p class="muted">none recorded</p>'
    head = "".join(f"<th>{e(label)}</th>" for _, label in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(r.get(k))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


_MOVEMENTS = [("transaction_id", "transaction_id"), ("missing_in", "missing in"), ("share", "share"),
              ("event_time", "time"), ("source_system", "source"), ("transaction_type", "type"),
              ("reason", "reason"), ("quantity", "quantity"), ("erp_reference", "ERP ref")]  # fmt: skip
_RECENT = [("partition_hour", "hour"), ("erp_end", "ERP end"), ("mes_end", "MES end"),
           ("cross_difference", "ERP − MES"), ("erp_three_way", "ERP 3-way"),
           ("mes_three_way", "MES 3-way")]  # fmt: skip


def item_page(item: dict, trail: list[dict], csrf: str, signed_in_as: str, error: str | None = None) -> str:
    ev = item["evidence"]
    bal = ev.get("balances", {})
    critical = '<span class="badge critical">critical</span> ' if item["critical"] else ""
    head = (
        f'<div class="card"><h2>{e(item["material_number"])} at {e(item["location"])}</h2>'
        f"<p>{critical}{_status(item)}</p>"
        f'<div class="id">correction_id: {e(item["correction_id"])}</div>'
        f"<dl><dt>Hour</dt><dd>{e(_hour(item['partition_hour']))}</dd>"
        f"<dt>Cause</dt><dd>{e(item['cause'].replace('_', ' '))}</dd>"
        f"<dt>Value at stake</dt><dd>{e(item['value'])}</dd>"
        f"<dt>Share of balance</dt><dd>{e(item['pct_of_balance'])} %</dd>"
        f"<dt>Note</dt><dd>{e(item['note'])}</dd></dl></div>"
    )
    proposed = (
        '<div class="card"><h2>Proposed correction</h2>'
        f"<dl><dt>Change</dt><dd>{e(item['target_system'])} {e(_signed(item['quantity']))} {e(item['unit'])}</dd>"
        f"<dt>Method</dt><dd>{e(item['method'])}</dd><dt>Rule</dt><dd>{e(item['rule'])}</dd>"
        f"<dt>System that is right</dt><dd>{e(item['truth'])}</dd>"
        f"<dt>{e(item['target_system'])} before</dt><dd>{e(item['before_quantity'])}</dd></dl></div>"
    )
    balances = (
        '<div class="card"><h2>Balances at the hour</h2>'
        f"<dl><dt>ERP begin → end</dt><dd>{e(bal.get('erp_begin'))} → {e(bal.get('erp_end'))} {e(item['unit'])}</dd>"
        f"<dt>MES begin → end</dt><dd>{e(bal.get('mes_begin'))} → {e(bal.get('mes_end'))} {e(item['unit'])}</dd>"
        f"<dt>ERP − MES</dt><dd>{e(bal.get('cross_difference'))}</dd>"
        f"<dt>Three-way ERP / MES</dt><dd>{e(bal.get('erp_three_way'))} / {e(bal.get('mes_three_way'))}</dd>"
        f"<dt>Unit cost</dt><dd>{e(bal.get('unit_cost'))}</dd></dl></div>"
    )
    movements = f'<div class="card"><h2>Movements behind it</h2>{_table(ev.get("movements", []), _MOVEMENTS)}</div>'
    recent = f'<div class="card"><h2>Recent hours of this key</h2>{_table(ev.get("recent_hours", []), _RECENT)}</div>'
    audit = _table(trail, [("logged_at", "when"), ("action", "action"), ("actor", "by"), ("note", "note")])
    trail_card = f'<div class="card"><h2>Audit trail</h2>{audit}</div>'
    return page(item["correction_id"], head + _decision(item, csrf, signed_in_as, error) + proposed + balances
                + movements + recent + trail_card)  # fmt: skip


def _decision(item: dict, csrf: str, signed_in_as: str, error: str | None) -> str:
    problem = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    if item["status"] != "held_for_review":
        decided = (f"{e(item['status'])} by {e(item['decided_by'])} at {e(item['decided_at'])}: "
                   f"{e(item['decision_note'])}")  # fmt: skip
        applied = f"<p>Applied at {e(item['applied_at'])}.</p>" if item["applied_at"] else ""
        return f'<div class="card"><h2>Decision</h2>{problem}<p>{decided}</p>{applied}</div>'
    action = f"/items/{quote(item['correction_id'], safe='')}/decision"
    return (
        f'<div class="card"><h2>Decide</h2>{problem}<form method="post" action="{e(action)}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<label>Your name<input name="by" required value="{e(signed_in_as)}" autocomplete="name"></label>'
        '<label>Reason<textarea name="reason" rows="2" required></textarea></label>'
        '<div class="actions"><button name="decision" value="approve" type="submit">Approve</button>'
        '<button class="reject" name="decision" value="reject" type="submit">Reject</button></div>'
        '<p class="muted">An approval is checked against the systems again and applied once by the next '
        "pipeline run.</p></form></div>"
    )
