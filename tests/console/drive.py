"""Drives Tandem's web console in headless Chromium (Debian's `chromium`, through Playwright) and
prints what the page showed as JSON, for the end-to-end test to compare with the API.

    python drive.py URL TOKEN VIEW FROM OUTPUT_DIR
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright

url, token, view, start, out = sys.argv[1:6]
chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")

with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=chromium,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    elsewhere = []
    page.on(
        "request",
        lambda r: None if r.url.startswith(url) else elsewhere.append(r.url),
    )
    page.goto(f"{url}/?view={view}&from={start}")
    # With tokens configured the page needs one; it keeps it for the session.
    page.fill("#token", token)
    page.dispatch_event("#token", "change")
    page.wait_for_selector(f"#views tbody tr[data-view='{view}'].selected", timeout=30_000)
    page.wait_for_selector("#chart circle.batch", timeout=30_000)
    page.wait_for_selector("#chart circle.speed", timeout=30_000)
    views = page.eval_on_selector_all(
        "#views tbody tr", "trs => trs.map(t => [...t.cells].map(c => c.textContent))"
    )
    rows = page.eval_on_selector_all(
        "#rows tbody tr",
        """trs => trs.map(t => ({window_start: t.dataset.windowStart,
            group: JSON.parse(t.dataset.group), values: JSON.parse(t.dataset.values),
            source: t.dataset.source}))""",
    )
    chart = {
        "circles": page.locator("#chart circle").count(),
        "batch": page.locator("#chart circle.batch").count(),
        "speed": page.locator("#chart circle.speed").count(),
        "lines": page.locator("#chart polyline").count(),
        "horizon": page.locator("#chart #horizon").count(),
    }
    # Submit a recompute job from the page and wait for it in the page's job list.
    page.select_option("#job-view", view)
    page.click("#submit-job")
    # (A selector wait, not wait_for_function: polling a JavaScript predicate needs eval, which
    # the console's Content-Security-Policy forbids.)
    page.wait_for_selector("#job-message[data-job]", timeout=10_000)
    job = page.get_attribute("#job-message", "data-job")
    page.wait_for_selector(f"#jobs tbody tr[data-job='{job}']", timeout=10_000)
    counts = {
        "dead_letters": page.text_content("#dead-letters"),
        "late_events": page.text_content("#late-events"),
    }
    os.makedirs(out, exist_ok=True)
    page.screenshot(path=os.path.join(out, "console.png"), full_page=True)
    browser.close()

print(
    json.dumps(
        {
            "views": views,
            "rows": rows,
            "chart": chart,
            "job": job,
            "counts": counts,
            "errors": errors,
            "elsewhere": elsewhere,
        }
    )
)
