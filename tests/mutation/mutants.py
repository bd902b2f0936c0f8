"""The curated mutants: each breaks one promise the service makes, with the
smallest change that does, and names the few tests that must catch it.

``original`` must occur exactly once in ``file`` (test_mutants_current.py
checks it in every test run): when the code changes, the mutant is updated
with it, never silently skipped. ``tests`` are pytest arguments (files or
node ids), chosen narrow so that one mutant runs in seconds.

To add one: pick a promise (a line of docs/ or a module docstring), find
the line that keeps it, write the change that breaks it as an exact
snippet and its replacement, name the tests that guard it, and run
``python -m tests.mutation --only NAME``: it must be killed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str
    promise: str
    file: str          # relative to the repository's root
    original: str      # occurs exactly once in file
    replacement: str
    tests: tuple[str, ...]


SIG = "tests/intake/test_signatures.py"
CLOVER = "tests/intake/test_providers_clover.py"
STRIPE = "tests/intake/test_providers_stripe.py"
CONTRACT = "tests/web/test_ingest_contract.py"
DB_ERRORS = "tests/storage/test_db_errors.py::test_each_sqlstate_is_answered_by_the_rule_and_the_retry_is_stored_once"
READ_API = "tests/web/test_read_api.py"
ORDER = "tests/storage/test_delivery_order.py"
FEED = "tests/web/test_feed.py"
FEED_ORDER = "tests/storage/test_feed_order.py"
HEADERS = "tests/intake/test_headers.py"
STORED_HEADERS = "tests/web/test_stored_headers.py"
ENGINE = "tests/delivery/test_engine.py"
ENGINE_ORDER = "tests/delivery/test_engine_order.py"
ENGINE_PROCESSES = "tests/delivery/test_engine_processes.py"
ENGINE_ANSWERS = "tests/delivery/test_engine_answers.py"
DELIVERY_ADMIN = "tests/delivery/test_admin_api.py"

MUTANTS: tuple[Mutant, ...] = (
    # -- push delivery ------------------------------------------------------------------------
    Mutant(
        "delivery-schedule-past-the-horizon",
        "delivery follows the read side's horizon: an event that commits late is still delivered",
        "sql/delivery.sql",
        "      AND e.xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))\n",
        "",
        (f"{ENGINE_ORDER}::test_an_event_that_commits_late_is_delivered_once",),
    ),
    Mutant(
        "delivery-stale-lease-records",
        "a worker whose lease ran out cannot record its result over a newer one's",
        "sql/delivery.sql",
        "d.event_id = o.event_id AND d.lease_token = o.token",
        "d.event_id = o.event_id",
        (f"{ENGINE}::test_a_stale_lease_cannot_record_over_a_newer_one",),
    ),
    Mutant(
        "delivery-ordered-head-not-rechecked",
        "ordered: two workers never send a tenant's head at once (the locked row is checked again)",
        "sql/delivery.sql",
        "      AND d.state = 'pending' AND d.next_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())\n",
        "",
        (f"{ENGINE_PROCESSES}::test_two_processes_deliver_every_event_exactly_once[ordered]",),
    ),
    Mutant(
        "delivery-disabled-still-sends",
        "a disabled destination is sent nothing until it is enabled",
        "sql/delivery.sql",
        "      AND (lease_until IS NULL OR lease_until < now())\n      AND EXISTS",
        "      AND (lease_until IS NULL OR lease_until < now())\n      AND TRUE OR EXISTS",
        (f"{DELIVERY_ADMIN}::test_disable_stops_deliveries_and_enable_resumes_them",),
    ),
    Mutant(
        "delivery-replay-clears-a-live-lease",
        "a replay leaves a delivery in flight to its sender: never sent twice at once",
        "sql/delivery.sql",
        "    WHERE NOT (d.state = 'pending' AND d.lease_until > now())\n",
        "",
        (f"{DELIVERY_ADMIN}::test_replay_leaves_a_delivery_in_flight_to_its_sender",),
    ),
    Mutant(
        "delivery-gone-not-disabling",
        "a 410 Gone disables the destination at once",
        "codex_ingest/delivery/engine.py",
        "            if outcome.disable:\n                async with",
        "            if False:\n                async with",
        (f"{ENGINE}::test_410_gone_disables_the_destination",),
    ),
    Mutant(
        "delivery-redirects-followed",
        "a 3xx is a failure: redirects are never followed",
        "codex_ingest/delivery/engine.py",
        "headers=headers, allow_redirects=False",
        "headers=headers, allow_redirects=True",
        (ENGINE_ANSWERS,),
    ),
    Mutant(
        "delivery-throttle-unlocked",
        "max_per_second holds across every worker and replica",
        "codex_ingest/delivery/engine.py",
        'await conn.execute(self._sql["throttle_lock"], name)',
        "pass",
        (f"{ENGINE_PROCESSES}::test_max_per_second_holds_across_two_processes",),
    ),
    Mutant(
        "delivery-throttled-lease-not-renewed",
        "an event waiting for a throttle slot longer than a lease is still sent once",
        "codex_ingest/delivery/engine.py",
        'if await conn.fetchval(self._sql["renew_lease"], name, row["event_id"], token, lease_seconds) is None:',
        "if False:",
        (f"{ENGINE_ORDER}::test_a_throttle_slower_than_the_lease_still_sends_each_event_once",),
    ),
    Mutant(
        "delivery-private-allowed-by-default",
        "by default nothing is sent to a loopback or private address (only allow_private_network lifts it)",
        "codex_ingest/delivery/ssrf.py",
        "    if reason is None or not allow_private:\n        return reason",
        "    if reason is None:\n        return reason",
        ("tests/delivery/test_ssrf.py::test_by_default_a_loopback_destination_is_refused_and_nothing_arrives",),
    ),
    # -- the combined feed: the same promises across tenants -----------------------------------
    Mutant(
        "feed-past-the-delivery-horizon",
        "the combined feed serves only rows older than every running transaction: a late commit of one "
        "tenant is never skipped",
        "sql/read.sql",
        "  AND (xact, id) > ($2::text::xid8, $3::bigint)\n  AND xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))\n",
        "  AND (xact, id) > ($2::text::xid8, $3::bigint)\n",
        (f"{FEED_ORDER}::test_an_event_that_commits_late_is_read_once_by_the_feed_and_skipped_by_id",),
    ),
    Mutant(
        "feed-cursor-of-either-kind",
        "the feed's cursors are its own: one tenant's cursor cannot continue the feed, nor the other way",
        "codex_ingest/storage/delivery.py",
        "if (match.group(1) is not None) != feed:",
        "if False:",
        (f"{FEED}::test_a_feed_cursor_is_refused_by_a_tenant_read_and_a_tenant_cursor_by_the_feed",),
    ),
    Mutant(
        "feed-expired-by-tenants-it-does-not-read",
        "a feed is expired only by the purge of a tenant it reads",
        "sql/read.sql",
        "           WHERE ($1::text[] IS NULL OR tenant_id = ANY($1::text[]))\n             AND generation",
        "           WHERE true\n             AND generation",
        (f"{FEED}::test_a_scoped_feed_is_not_expired_by_the_purge_of_a_tenant_it_does_not_read",),
    ),
    Mutant(
        "expired-by-a-purge-before-the-read",
        "a reader that began after a purge is never told 410 by it",
        "sql/read.sql",
        "             AND generation >= $4::text::xid8\n",
        "",
        (f"{FEED}::test_a_reader_that_began_after_a_purge_is_never_expired_by_it",
         f"{FEED}::test_an_empty_first_read_after_everything_was_purged_is_not_expired_by_that_purge"),
    ),
    Mutant(
        "purge-generation-kept-from-the-first-purge",
        "each purge that moves a horizon records itself: a later purge expires the cursors it skips",
        "sql/retention.sql",
        "id = EXCLUDED.id, generation = EXCLUDED.generation",
        "id = EXCLUDED.id",
        (f"{FEED}::test_a_reader_that_began_after_a_purge_is_never_expired_by_it",),
    ),
    Mutant(
        "scoped-feed-reads-every-tenant",
        "a token scoped to some tenants reads exactly those in its feed",
        "sql/read.sql",
        "        WHERE tenant_id = t.tenant_id\n",
        "        WHERE true\n",
        (f"{FEED}::test_a_star_token_reads_every_tenant_and_a_scoped_token_exactly_its_own_in_the_global_order",),
    ),
    # -- stored headers: what a consumer needs, never a credential -------------------------------
    Mutant(
        "headers-keep-a-secret",
        "a header whose value carries one of the service's secrets or tokens is never stored",
        "codex_ingest/intake/headers.py",
        "            if self._guard.carries_secret(value):",
        "            if False:",
        (f"{HEADERS}::test_a_value_carrying_a_secret_whole_or_as_a_part_is_dropped_and_counted",
         f"{STORED_HEADERS}::test_a_header_carrying_a_token_or_secret_of_ours_is_not_stored_and_is_counted"),
    ),
    Mutant(
        "headers-keep-credentials",
        "Authorization, Cookie and Proxy-* are never stored",
        "codex_ingest/intake/headers.py",
        "    return lowered in _NEVER or lowered.startswith(_NEVER_PREFIX)",
        "    return False",
        (f"{HEADERS}::test_forbidden_names_are_never_kept_even_when_a_keeper_is_given_them",),
    ),
    Mutant(
        "headers-unbounded",
        "the headers stored with an event are bounded by HEADERS_MAX_BYTES",
        "codex_ingest/intake/headers.py",
        "            if size > room:",
        "            if False:",
        (f"{STORED_HEADERS}::test_an_oversized_set_of_headers_is_accepted_the_schemes_own_kept_the_rest_dropped_and_counted",),
    ),
    Mutant(
        "headers-not-read-back",
        "GET /events shows each event's stored headers (a consumer re-verifies from them)",
        "codex_ingest/web/read.py",
        '"headers": None if event.headers is None else orjson.Fragment(event.headers),',
        '"headers": None,',
        ("tests/test_reverify.py",),
    ),
    # -- signatures: constant time, whole digests, every key ---------------------------------
    Mutant(
        "hmac-eq-not-compare-digest",
        "signatures are compared in constant time (issue 17 §1, row 1)",
        "codex_ingest/intake/signatures.py",
        "matched |= hmac.compare_digest(digest, candidate)",
        "matched |= digest.__eq__(candidate)",
        (f"{SIG}::test_every_key_is_compared_with_compare_digest_over_whole_digests",
         f"{SIG}::test_no_secret_signature_digest_or_token_is_compared_with_an_equality_operator"),
    ),
    Mutant(
        "hmac-prefix-only",
        "the whole signature is checked, not a prefix of it",
        "codex_ingest/intake/signatures.py",
        "matched |= hmac.compare_digest(digest, candidate)",
        "matched |= hmac.compare_digest(digest[:4], candidate[:4])",
        (f"{SIG}::test_a_candidate_wrong_only_in_its_last_byte_is_refused_after_a_whole_comparison",),
    ),
    Mutant(
        "hmac-first-secret-only",
        "rotation: any configured secret verifies",
        "codex_ingest/intake/signatures.py",
        "for digest in self.digests(*parts):",
        "for digest in self.digests(*parts)[:1]:",
        (f"{STRIPE}::test_rotation_both_secrets_verify_and_a_removed_one_does_not",),
    ),
    Mutant(
        "hmac-first-candidate-only",
        "any signature a provider lists (Stripe's v1s, Standard Webhooks' list) may match",
        "codex_ingest/intake/signatures.py",
        "for candidate in candidates:",
        "for candidate in candidates[:1]:",
        (f"{STRIPE}::test_any_v1_matching_passes",
         "tests/intake/test_providers_standard_webhooks.py::test_any_signature_in_the_list_may_match"),
    ),
    Mutant(
        "clover-auth-eq",
        "Clover's auth code is compared in constant time",
        "codex_ingest/intake/schemes/clover.py",
        "matched |= hmac.compare_digest(digest, code)",
        "matched |= digest == code",
        (f"{SIG}::test_every_key_is_compared_with_compare_digest_over_whole_digests[clover]",
         f"{SIG}::test_no_secret_signature_digest_or_token_is_compared_with_an_equality_operator"),
    ),
    Mutant(
        "tolerance-one-sided",
        "a timestamp further than tolerance_seconds from now, either way, is 401",
        "codex_ingest/intake/schemes/base.py",
        "if abs(now - timestamp) > tolerance:",
        "if now - timestamp > tolerance:",
        (f"{STRIPE}::test_replay_window_is_exact",),
    ),
    Mutant(
        "stripe-tolerance-skipped",
        "Stripe: a stale or replayed t is 401",
        "codex_ingest/intake/schemes/stripe.py",
        '        check_fresh(timestamp, self._clock(), self._tolerance, f"{HEADER} t")\n',
        "",
        (f"{STRIPE}::test_replay_window_is_exact", f"{STRIPE}::test_tolerance_is_per_source"),
    ),
    Mutant(
        "square-url-unsigned",
        "Square signs the notification URL before the body",
        "codex_ingest/intake/schemes/square.py",
        'prefix=notification_url.encode("utf-8")',
        'prefix=b""',
        ("tests/intake/test_providers_square.py::test_published_vector_is_accepted_with_its_merchant_and_event_id",),
    ),
    # -- dedup: one INSERT decides, a conflict replaces nothing -----------------------------
    Mutant(
        "dedup-insert-replaces",
        "a key stored before is never replaced (one event)",
        "sql/events.sql",
        "ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING\nRETURNING id, received_at;",
        "ON CONFLICT (tenant_id, source, idempotency_key) DO UPDATE SET body = EXCLUDED.body,"
        " body_sha256 = EXCLUDED.body_sha256\nRETURNING id, received_at;",
        (f"{CONTRACT}::test_same_key_different_body_is_422_and_nothing_replaced",
         f"{CONTRACT}::test_same_key_same_body_is_200_duplicate_with_original_id"),
    ),
    Mutant(
        "dedup-batch-replaces",
        "a key stored before is never replaced (micro-batches)",
        "sql/events.sql",
        "ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING\n"
        "RETURNING id, tenant_id, source, idempotency_key, received_at;",
        "ON CONFLICT (tenant_id, source, idempotency_key) DO UPDATE SET body = EXCLUDED.body,"
        " body_sha256 = EXCLUDED.body_sha256\nRETURNING id, tenant_id, source, idempotency_key, received_at;",
        (f"{CONTRACT}::test_same_key_different_body_is_422_and_nothing_replaced",
         f"{CONTRACT}::test_same_key_same_body_is_200_duplicate_with_original_id"),
    ),
    Mutant(
        "conflict-taken-for-duplicate",
        "same key, different body: 422, not a 200 duplicate",
        "codex_ingest/storage/store.py",
        "Outcome.DUPLICATE if same else Outcome.CONFLICT",
        "Outcome.DUPLICATE",
        (f"{CONTRACT}::test_same_key_different_body_is_422_and_nothing_replaced",),
    ),
    Mutant(
        "clover-conflicts-ignored",
        "Clover: a change stored before with another body makes the request 422, the others stored"
        " (issue 17 §1, row 3)",
        "codex_ingest/web/ingest.py",
        "    if conflicts:\n",
        "    if False:\n",
        (f"{CLOVER}::test_a_change_stored_before_with_another_body_makes_the_request_422_and_the_others_are_stored",),
    ),
    Mutant(
        "clover-first-failure-wins",
        "in a multi-event request a 503 wins over a 400, so the provider retries (issue 17 §1, row 4)",
        "codex_ingest/web/ingest.py",
        "if failure is None or (isinstance(result, DatabaseUnavailable) and not isinstance(failure, DatabaseUnavailable)):",
        "if failure is None:",
        (f"{CLOVER}::test_a_503_wins_over_a_400_in_one_notification_so_clover_retries",),
    ),
    # -- what the database says: one rule ---------------------------------------------------
    Mutant(
        "class-22-answered-503",
        "a 4xx only for the event's own values (class 22), never a 503 the sender retries forever",
        "codex_ingest/storage/dberrors.py",
        "    if is_row_fault(exc):\n        return EventRejected()",
        "    if is_row_fault(exc):\n        return DatabaseUnavailable(retry_after=retry_after)",
        (f"{DB_ERRORS}[direct-22001]", f"{DB_ERRORS}[batched-22001]"),
    ),
    Mutant(
        "server-state-answered-500",
        "a state of the server that can pass (disk full, read-only) is 503, not 500",
        "codex_ingest/storage/dberrors.py",
        "return state[:2] in _SERVER_STATE_CLASSES or state in _OPERATOR_STATES",
        "return state in _OPERATOR_STATES",
        (f"{DB_ERRORS}[direct-53100]", f"{DB_ERRORS}[batched-25006]"),
    ),
    Mutant(
        "retry-after-missing",
        "every 503 carries Retry-After",
        "codex_ingest/errors.py",
        '        super().__init__(detail)\n        self.headers = {"Retry-After": str(retry_after)}\n\n\n'
        "class UnsupportedContentEncoding",
        "        super().__init__(detail)\n\n\nclass UnsupportedContentEncoding",
        (f"{DB_ERRORS}[direct-53100]",),
    ),
    # -- the read side: the cursor and the horizon ------------------------------------------
    Mutant(
        "read-past-the-delivery-horizon",
        "only rows older than every running transaction are served: a late commit is never skipped",
        "sql/read.sql",
        "  AND (xact, id) > ($3::text::xid8, $4::bigint)\n  AND xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))\n",
        "  AND (xact, id) > ($3::text::xid8, $4::bigint)\n",
        (f"{ORDER}::test_an_event_that_commits_late_is_read_once_by_cursor_and_skipped_by_id",),
    ),
    Mutant(
        "read-ordered-by-id",
        "delivery order is (xact, id), the cursor's order",
        "sql/read.sql",
        "ORDER BY xact, id\nLIMIT $5;",
        "ORDER BY id\nLIMIT $5;",
        (f"{ORDER}::test_delivery_order_is_numeric_when_transaction_ids_gain_a_digit",),
    ),
    Mutant(
        "read-ordered-as-text",
        "delivery order is numeric when transaction ids gain a digit",
        "sql/read.sql",
        "ORDER BY xact, id\nLIMIT $5;",
        "ORDER BY xact::text, id\nLIMIT $5;",
        (f"{ORDER}::test_delivery_order_is_numeric_when_transaction_ids_gain_a_digit",),
    ),
    Mutant(
        "read-cursor-inclusive",
        "following next_cursor gets every event once: the cursor's own event is not repeated",
        "sql/read.sql",
        "  AND (xact, id) > ($3::text::xid8, $4::bigint)\n  AND xact < (SELECT pg_snapshot_xmin",
        "  AND (xact, id) >= ($3::text::xid8, $4::bigint)\n  AND xact < (SELECT pg_snapshot_xmin",
        (f"{READ_API}::test_following_next_cursor_gets_every_event_once_in_order_with_limit_and_source",),
    ),
    Mutant(
        "expired-cursor-reads-on",
        "a cursor behind purged events is 410, not a silent gap",
        "codex_ingest/storage/delivery.py",
        'if after is not None and state["expired"]:',
        "if False:",
        (f"{READ_API}::test_a_cursor_behind_purged_events_is_410_and_a_fresh_read_starts_after_them",),
    ),
    # -- retention --------------------------------------------------------------------------
    Mutant(
        "purge-horizon-moves-back",
        "the purge horizon never moves back (issue 17 §1, row 2)",
        "sql/retention.sql",
        "\n    WHERE (h.xact, h.id) < (EXCLUDED.xact, EXCLUDED.id)",
        "",
        ("tests/storage/test_purge_horizon.py",),
    ),
    Mutant(
        "purge-horizon-first-deleted",
        "the horizon is the last (xact, id) deleted, not the first",
        "sql/retention.sql",
        "ORDER BY tenant_id, xact DESC, id DESC",
        "ORDER BY tenant_id, xact, id",
        (f"{READ_API}::test_a_cursor_behind_purged_events_is_410_and_a_fresh_read_starts_after_them",),
    ),
    Mutant(
        "purge-ignores-the-cutoff",
        "retention deletes only events older than the window",
        "sql/retention.sql",
        "SELECT id FROM events WHERE received_at < $1 ORDER BY id",
        "SELECT id FROM events WHERE received_at < greatest($1, now()) ORDER BY id",
        ("tests/storage/test_purge_horizon.py",),
    ),
    # -- body and batch limits --------------------------------------------------------------
    Mutant(
        "max-body-off-by-one",
        "a body of exactly MAX_BODY_BYTES is accepted",
        "codex_ingest/web/body.py",
        "if declared is not None and declared > max_bytes:",
        "if declared is not None and declared >= max_bytes:",
        (f"{CONTRACT}::test_body_over_max_body_bytes_is_413",),
    ),
    Mutant(
        "chunked-body-off-by-one",
        "a chunked body of exactly MAX_BODY_BYTES is accepted, one byte more is 413",
        "codex_ingest/web/body.py",
        "if size > max_bytes:",
        "if size >= max_bytes:",
        (f"{CONTRACT}::test_a_chunked_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413",),
    ),
    Mutant(
        "batch-items-off-by-one",
        "a batch of exactly BATCH_MAX_ITEMS events is accepted",
        "codex_ingest/intake/batch.py",
        "if len(items) > max_items:",
        "if len(items) >= max_items:",
        (f"{CONTRACT}::test_a_batch_of_exactly_batch_max_items_is_accepted_and_one_more_is_413",),
    ),
    # -- read tokens, durability, the rate limit --------------------------------------------
    Mutant(
        "token-reads-another-tenant",
        "a read token reads only its own tenants",
        "codex_ingest/web/auth.py",
        "if tenants is not None and tenant not in tenants:",
        "if tenants is not None and not tenants:",
        (f"{READ_API}::test_a_token_reads_only_its_tenants",),
    ),
    Mutant(
        "synchronous-commit-off",
        "a 2xx means committed and flushed: synchronous_commit is pinned on",
        "codex_ingest/storage/pool.py",
        '"synchronous_commit": "on"',
        '"synchronous_commit": "off"',
        ("tests/storage/test_dbpool.py::test_connections_commit_synchronously",),
    ),
    Mutant(
        "synchronous-commit-unpinned",
        "synchronous_commit is pinned on by the service, whatever the server's default",
        "codex_ingest/storage/pool.py",
        '{"application_name": "codex-ingest", "synchronous_commit": "on"}',
        '{"application_name": "codex-ingest"}',
        ("tests/storage/test_dbpool.py::test_connections_commit_synchronously_on_a_server_whose_default_is_off",),
    ),
    Mutant(
        "ratelimit-burst-plus-one",
        "the rate limit lets through a burst, not one more",
        "codex_ingest/intake/ratelimit.py",
        "if tokens >= 1.0:",
        "if tokens >= 0.0:",
        ("tests/intake/test_ratelimit.py::test_burst_then_refusal_with_the_wait_until_the_next_token",),
    ),
    Mutant(
        "ratelimit-shared-across-sources",
        "the rate limit is per (tenant, source)",
        "codex_ingest/intake/ratelimit.py",
        "key = (tenant, source)",
        'key = (tenant, "")',
        ("tests/intake/test_ratelimit.py::test_buckets_are_per_tenant_and_per_source",),
    ),
)

BY_NAME = {m.name: m for m in MUTANTS}
