"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against a
live gateway (keys on) over the demo store, with traffic and feedback the test sends through the
OpenAI SDK. Every page loads with no console error; the heatmap's cells are
avengers.cluster_profiles; a filter narrows the request list; a request's page shows what the
route log holds. A screenshot of each page is taken (`make screenshots` keeps them in docs/img,
where the docs show them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from avengers_store import demo
from avengers_store.gateway import keys
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import scripted_server, set_endpoints

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, in a sandbox without a GPU or a network beyond the loopback (see ENVIRONMENT.md).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
# Screenshots go where AVENGERS_SCREENSHOTS says (`make screenshots`: the docs' images), else to
# a temporary folder, so a test run leaves the checkout as it found it.
IMAGES = Path(
    os.environ.get("AVENGERS_SCREENSHOTS") or tempfile.mkdtemp(prefix="avengers-console-")
)
PAGES = {
    "overview": "/console/",
    "profiles": "/console/profiles",
    "requests": "/console/requests",
    "costs": "/console/costs",
    "drift": "/console/drift",
    "shadow": "/console/shadow",
}
QUESTIONS = [
    ("app-a", "What is 7*6?"),
    ("app-a", "Write a python function to count positive numbers in a list."),
    ("app-a", "Who wrote Pride and Prejudice?"),
    ("app-a", "What is the capital of Australia?"),
    ("app-b", "Which gas do plants absorb from the air?"),
    ("app-b", "Solve for x: 2x + 3 = 11."),
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)",
)


@dataclass
class Live:
    base_url: str
    db_url: str
    console_key: str
    route_ids: list[str]


@pytest.fixture(scope="module")
def live(db_url, tmp_path_factory) -> Iterator[Live]:
    demo.run_demo(url=db_url, plot=tmp_path_factory.mktemp("demo") / "profiles.png")
    with psycopg.connect(db_url) as conn:
        active = [r[0] for r in conn.execute("SELECT name FROM avengers.models WHERE active")]
        # The sample's prices per 1M tokens (shared/data/README.md), so requests cost something.
        conn.execute(
            """UPDATE avengers.models SET cost_in_per_m = p, cost_out_per_m = p
               FROM (SELECT name, CASE WHEN name ~ '(49b|51b|70b)' THEN 0.9
                                       WHEN name = 'gemma-2-9b-it' THEN 0.1 ELSE 0.2 END
                     FROM avengers.models) AS priced(name, p)
               WHERE models.name = priced.name"""
        )
    made = {name: keys.create_key(name, url=db_url)[1] for name in ("app-a", "app-b")}
    _, console_key = keys.create_key("ops", console_only=True, url=db_url)
    with scripted_server() as models:
        models.answers("smol", "42", "The answer is 42.")
        set_endpoints(db_url, **{name: (models.base_url, "smol") for name in active})
        settings = GatewaySettings(auth=True, upstream_retries=0, feedback_refresh_s=0)
        with gateway_server(settings, database_url=db_url) as gw:
            route_ids = []
            for key_name, question in QUESTIONS:
                client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=made[key_name])
                raw = client.chat.completions.with_raw_response.create(
                    model="avengers",
                    messages=[{"role": "user", "content": question}],
                    extra_body={"samples": 2},
                )
                route_ids.append(raw.headers["x-avengers-route-id"])
            for route_id, score in zip(route_ids[:3], (1.0, 0.0, 1.0), strict=True):
                answer = httpx.post(
                    gw.base_url + "/v1/feedback",
                    json={"route_id": route_id, "score": score},
                    headers={"Authorization": f"Bearer {made['app-a']}"},
                )
                assert answer.status_code == 200, answer.text
            yield Live(gw.base_url, db_url, console_key, route_ids)


@pytest.fixture(scope="module")
def browser(live, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
            color_scheme="light",
        )
        page = context.new_page()
        # The login form keeps the console-only key in a cookie for the pages that follow.
        page.goto(live.base_url + "/console/")
        assert "/console/login" in page.url
        page.fill("input[name=key]", live.console_key)
        page.click("button[type=submit]")
        page.wait_for_url(live.base_url + "/console/")
        yield context
        context.close()


def open_page(context, url: str):
    """A page at ``url`` and the console errors it logged while loading."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    return page, response, errors


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_loads_without_console_errors(live, browser, name):
    page, response, errors = open_page(browser, live.base_url + PAGES[name])
    assert response.status == 200
    assert errors == []
    assert page.locator("nav a[aria-current=page]").inner_text().lower() == name
    # The page prints the SQL it ran.
    assert page.locator("details.queries pre").first.text_content().startswith("SELECT")
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=True)
    page.close()


def test_cluster_and_request_pages_load_on_a_phone_in_dark_mode(live, browser):
    page, response, errors = open_page(browser, live.base_url + "/console/profiles/0")
    assert response.status == 200 and errors == []
    page.screenshot(path=str(IMAGES / "console-cluster.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    page.goto(live.base_url + f"/console/requests/{live.route_ids[0]}")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 22, 27)"  # the dark theme's --bg
    # Nothing but the tables' own scrollers is wider than the phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert errors == []
    page.screenshot(path=str(IMAGES / "console-request-phone-dark.png"), full_page=True)
    page.close()


def test_the_heatmap_cells_equal_cluster_profiles(live, browser):
    page, _, _ = open_page(browser, live.base_url + "/console/profiles")
    cells = page.eval_on_selector_all(
        "#heatmap td.cell[data-mean]",
        "cells => cells.map(c => [c.dataset.cluster, c.dataset.model, c.dataset.mean, c.dataset.n])",
    )
    with psycopg.connect(live.db_url) as conn:
        profiles = conn.execute(
            "SELECT cluster, model, mean_score, n FROM avengers.cluster_profiles"
        ).fetchall()
    shown = {(int(c), m): (float(mean), int(n)) for c, m, mean, n in cells}
    assert shown == {(c, m): (mean, n) for c, m, mean, n in profiles}
    # Sorting by a model puts the clusters where it scores best first.
    model = profiles[0][1]
    page.click(f'#heatmap button.sort[data-sort="{model}"]')
    first = page.eval_on_selector_all(
        f'#heatmap tbody tr td.cell[data-model="{model}"]',
        "cells => cells.map(c => Number(c.dataset.value))",
    )
    assert first == sorted(first, reverse=True) and len(first) == len({p[0] for p in profiles})
    page.close()


def test_a_filter_narrows_the_request_list(live, browser):
    page, _, errors = open_page(browser, live.base_url + "/console/requests")
    everything = page.locator("#request-list tbody tr").count()
    assert everything == len(QUESTIONS)
    page.select_option("select[name=key]", "app-b")
    page.wait_for_url("**key=app-b**")
    ids = page.eval_on_selector_all(
        "#request-list tbody tr", "rows => rows.map(r => r.dataset.routeId)"
    )
    with psycopg.connect(live.db_url) as conn:
        expected = {
            str(r[0])
            for r in conn.execute(
                """SELECT route_id FROM avengers.route_log r
                   JOIN avengers.api_keys k ON k.id = r.api_key_id WHERE k.name = 'app-b'"""
            )
        }
    assert set(ids) == expected and 0 < len(ids) < everything
    assert errors == []
    page.close()


def test_a_request_page_shows_the_logged_decision(live, browser):
    route_id = live.route_ids[0]
    page, response, errors = open_page(browser, live.base_url + f"/console/requests/{route_id}")
    assert response.status == 200 and errors == []
    with psycopg.connect(live.db_url) as conn:
        cluster, answer_model, strategy, candidates, scores = conn.execute(
            """SELECT cluster, answer_model, strategy, metadata -> 'candidates',
                      metadata -> 'scores'
               FROM avengers.route_log WHERE route_id = %s""",
            (route_id,),
        ).fetchone()
        feedback = conn.execute(
            "SELECT score FROM avengers.feedback WHERE route_id = %s", (route_id,)
        ).fetchall()
    explanation = page.locator("#explanation").inner_text()
    assert explanation.startswith("clustering ") and f"nearest cluster {cluster} " in explanation
    for rank, (model, score) in enumerate(zip(candidates, scores, strict=True), start=1):
        assert f"  {rank}. {model}: score {score:.3f}; " in explanation
    assert page.locator("#answer-model").inner_text() == answer_model
    assert page.locator("#strategy").inner_text().startswith(strategy)
    shown = page.eval_on_selector_all(
        "#candidates tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)"
    )
    assert shown == candidates
    assert page.locator("#feedback tbody tr").count() == len(feedback) == 1
    page.close()


def test_keys_guard_the_console_and_a_console_key_opens_nothing_else(live):
    bearer = {"Authorization": f"Bearer {live.console_key}"}
    anonymous = httpx.get(live.base_url + "/console/requests", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/console/login?next=/console/requests"
    wrong = httpx.get(
        live.base_url + "/console/", headers={"Authorization": "Bearer avk-nope"},
        follow_redirects=False,
    )  # fmt: skip
    assert wrong.status_code == 303
    assert httpx.get(live.base_url + "/console/costs", headers=bearer).status_code == 200
    refused = openai.OpenAI(base_url=live.base_url + "/v1", api_key=live.console_key)
    with pytest.raises(openai.PermissionDeniedError, match="console"):
        refused.chat.completions.create(
            model="avengers", messages=[{"role": "user", "content": "What is 7*6?"}]
        )
