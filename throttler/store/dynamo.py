"""The state table on DynamoDB: one table per stage, string partition key `pk`, TTL on `ttl`.

Conditions are built from named parts; one AWS error code (a failed condition) becomes one expected
outcome (False), any other AWS error a StoreError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from throttler.core.errors import StoreError
from throttler.core.quotas import plain_item
from throttler.store.base import (
    ATTEMPTS_PREFIX,
    BATCH_PREFIX,
    DONE_PREFIX,
    KEY_SIGNAL_PREFIX,
    KEY_THROTTLE_KEY,
    KEY_USAGE_PREFIX,
    LAST_GOOD_KEY,
    LEASE_KEY,
    MAX_KEYS_PER_COMMIT,
    PAUSE_KEY,
    QUOTAS_KEY,
    STAGE_KEY,
    THROTTLE_KEY,
    THROTTLE_SKEW_S,
    TTL_ATTRIBUTE,
    USAGE_KEY,
    BatchRecord,
    Control,
    KeyMeterWrite,
    LeaseState,
    OpenBatch,
    StateStore,
    ThrottleSignal,
    UsageRecord,
    WorkerRecords,
    read_throttle_items,
    signal_fields,
    stored_signal,
    throttle_fields,
)

CONDITION_FAILED = "ConditionalCheckFailedException"
_SER = TypeSerializer()
_DE = TypeDeserializer()


def _ddb(value: Any) -> Any:
    """Plain Python to what TypeSerializer accepts (floats become Decimals, recursively)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [_ddb(v) for v in value]
    if isinstance(value, dict):
        return {k: _ddb(v) for k, v in value.items()}
    return value


def _item(plain: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _SER.serialize(_ddb(v)) for k, v in plain.items()}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _DE.deserialize(v) for k, v in item.items()}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(float(value)) if isinstance(value, float) else str(value)}


def _open_entry(batch: OpenBatch) -> dict[str, Any]:
    entry: dict[str, Any] = {"owner": batch.owner, "until": batch.until}
    if batch.last is not None:
        entry["last"] = batch.last
    return entry


def _open_batch(entry: Mapping[str, Any]) -> OpenBatch:
    last = entry.get("last")
    return OpenBatch(str(entry["owner"]), float(entry["until"]), float(last) if last is not None else None)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Table:
    """Shared plumbing: calls with errors wrapped, batched reads and writes."""

    def __init__(self, client: Any, table_name: str):
        self._client = client
        self._table = table_name

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "ResourceNotFoundException":
                raise StoreError(
                    f"table {self._table} does not exist: is the stage deployed (or the local stack running)?"
                ) from exc
            raise StoreError(f"dynamodb {operation} failed: {code}") from exc
        except BotoCoreError as exc:  # botocore's retries ran out on a dropped connection or a read timeout
            raise StoreError(f"dynamodb {operation} failed: {type(exc).__name__}") from exc

    def _conditional(self, operation: str, **kwargs: Any) -> bool:
        """A write whose failed condition is an expected outcome (False)."""
        try:
            getattr(self._client, operation)(**kwargs)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == CONDITION_FAILED:
                return False
            raise StoreError(f"dynamodb {operation} failed: {exc.response['Error']['Code']}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb {operation} failed: {type(exc).__name__}") from exc

    def _get_many(self, pks: Sequence[str], projection: str | None = None) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(pks))
        for chunk in _chunks(unique, 100):
            spec: dict[str, Any] = {"Keys": [{"pk": {"S": pk}} for pk in chunk], "ConsistentRead": True}
            if projection:
                spec["ProjectionExpression"] = projection
            request: dict[str, Any] = {self._table: spec}
            for _ in range(20):
                response = self._call("batch_get_item", RequestItems=request)
                for item in response["Responses"].get(self._table, []):
                    plain = _plain(item)
                    found[str(plain["pk"])] = plain
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise StoreError("dynamodb batch_get_item left keys unprocessed")
        return found

    def _write_many(self, requests: Sequence[dict[str, Any]]) -> None:
        for chunk in _chunks(list(requests), 25):
            request: dict[str, Any] = {self._table: list(chunk)}
            for _ in range(20):
                response = self._call("batch_write_item", RequestItems=request)
                request = response.get("UnprocessedItems") or {}
                if not request:
                    break
            else:
                raise StoreError("dynamodb batch_write_item left items unprocessed")


class _DynamoControl(_Table):
    """Control items and the lease (the first half of DynamoStateStore)."""

    # ------------------------------------------------------------------ control
    def read_control(self) -> Control:
        found = self._get_many([QUOTAS_KEY, LAST_GOOD_KEY, PAUSE_KEY, THROTTLE_KEY, KEY_THROTTLE_KEY, LEASE_KEY, STAGE_KEY])
        pause = found.get(PAUSE_KEY)
        last_good = found.get(LAST_GOOD_KEY)
        quotas = found.get(QUOTAS_KEY)
        stage_signal, key_signals = read_throttle_items(found.get(THROTTLE_KEY), found.get(KEY_THROTTLE_KEY))
        return Control(
            {k: v for k, v in quotas.items() if k != "pk"} if quotas else None,
            json.loads(last_good["item"]) if last_good else None,
            float(pause["until"]) if pause else None,
            str(pause.get("reason")) if pause else None,
            stage_signal,
            _lease(found.get(LEASE_KEY)),
            json.loads(found[STAGE_KEY]["settings"]) if STAGE_KEY in found else None,
            key_signals,
        )

    def put_quotas(self, item: Mapping[str, Any]) -> None:
        self._call("put_item", TableName=self._table, Item=_item({**item, "pk": QUOTAS_KEY}))

    def put_last_good(self, item: Mapping[str, Any]) -> None:
        body = {"pk": LAST_GOOD_KEY, "item": json.dumps(plain_item(item), sort_keys=True, default=str)}
        self._call("put_item", TableName=self._table, Item=_item(body))

    def put_stage_settings(self, settings: Mapping[str, Any]) -> None:
        body = {"pk": STAGE_KEY, "settings": json.dumps(dict(settings), sort_keys=True, default=str)}
        self._call("put_item", TableName=self._table, Item=_item(body))

    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        kwargs: dict[str, Any] = {}
        if extend_only:
            kwargs = {
                "ConditionExpression": "attribute_not_exists(#until) OR #until < :until",
                "ExpressionAttributeNames": {"#until": "until"},
                "ExpressionAttributeValues": {":until": _n(until)},
            }
        self._conditional(
            "put_item", TableName=self._table, Item=_item({"pk": PAUSE_KEY, "until": until, "reason": reason}), **kwargs
        )

    def clear_pause(self) -> None:
        self._write_many([{"DeleteRequest": {"Key": {"pk": {"S": k}}}} for k in (PAUSE_KEY, THROTTLE_KEY, KEY_THROTTLE_KEY)])

    def publish_throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        DynamoWorkerRecords(self._client, self._table).throttle(signal, now)

    def forget_key_throttles(self, signals: Sequence[ThrottleSignal]) -> bool:
        names: dict[str, str] = {"#at": "at"}
        values: dict[str, Any] = {}
        removes, conditions = [], []
        for i, signal in enumerate(s for s in signals if s.key is not None):
            names[f"#k{i}"] = KEY_SIGNAL_PREFIX + str(signal.key)
            values[f":a{i}"] = _n(signal.at)
            removes.append(f"#k{i}")
            conditions.append(f"#k{i}.#at = :a{i}")  # still the signal read: a newer 429 of the key stays
        if not removes:
            return True
        return self._conditional(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": KEY_THROTTLE_KEY}},
            UpdateExpression="REMOVE " + ", ".join(removes),
            ConditionExpression=" AND ".join(conditions),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    # ------------------------------------------------------------------ lease
    def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
        lease: dict[str, Any] = {"pk": LEASE_KEY, "owner": owner, "expires_at": now + ttl_s}
        if runs_until is not None:
            lease["runs_until"] = runs_until
        taken = self._conditional(
            "put_item",
            TableName=self._table,
            Item=_item(lease),
            ConditionExpression="attribute_not_exists(pk) OR #owner = :owner OR expires_at < :now",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": owner}, ":now": _n(now)},
        )
        if taken:
            return LeaseState(owner, now + ttl_s, runs_until=runs_until)
        current = _lease(self._get_many([LEASE_KEY]).get(LEASE_KEY))
        return current or self.acquire_lease(owner, now, ttl_s, runs_until)

    def request_handover(self, owner: str, holder: str, now: float, wait_s: float) -> bool:
        return self._conditional(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": LEASE_KEY}},
            UpdateExpression="SET successor = :me, successor_until = :until",
            ConditionExpression=(
                "#owner = :holder AND (attribute_not_exists(successor) OR successor = :me OR successor_until < :now)"
            ),
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":me": {"S": owner},
                ":holder": {"S": holder},
                ":until": _n(now + wait_s),
                ":now": _n(now),
            },
        )

    def hand_over(self, owner: str, successor: str, now: float, ttl_s: float) -> bool:
        return self._conditional(
            "put_item",
            TableName=self._table,
            Item=_item({"pk": LEASE_KEY, "owner": successor, "expires_at": now + ttl_s}),
            ConditionExpression="#owner = :me AND successor = :successor",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":me": {"S": owner}, ":successor": {"S": successor}},
        )

    def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
        values = {":me": {"S": owner}, ":until": _n(now + ttl_s)}
        if runs_until is not None:
            values[":runs"] = _n(runs_until)
        return self._conditional(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": LEASE_KEY}},
            UpdateExpression="SET expires_at = :until" + (", runs_until = :runs" if runs_until is not None else ""),
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues=values,
        )

    def release_lease(self, owner: str) -> None:
        self._conditional(
            "delete_item",
            TableName=self._table,
            Key={"pk": {"S": LEASE_KEY}},
            ConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": owner}},
        )


class DynamoStateStore(_DynamoControl, StateStore):
    """The throttler's and operator's view (the throttler's role may write any item of the table)."""

    # ------------------------------------------------------------------ usage
    def load_usage(self) -> UsageRecord:
        item = self._get_many([USAGE_KEY]).get(USAGE_KEY)
        if item is None:
            return UsageRecord(0, None)
        opened = {str(b): _open_batch(v) for b, v in (item.get("open") or {}).items()}
        done_until = item.get("done_until")
        keys = json.loads(item["keys"]) if item.get("keys") else {}
        return UsageRecord(
            int(item["version"]), item.get("meter"), opened, float(done_until) if done_until is not None else None, keys
        )

    def load_key_meters(self, keys: Sequence[str]) -> dict[str, str | None]:
        found = self._get_many([KEY_USAGE_PREFIX + k for k in keys], projection="pk, meter")
        return {k: (found.get(KEY_USAGE_PREFIX + k) or {}).get("meter") for k in keys}

    def _usage_update(
        self,
        expected_version: int,
        stage_meter: str | None,
        open_add: Mapping[str, OpenBatch],
        open_remove: Iterable[str],
        done_until: float | None,
        keys_summary: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        names: dict[str, str] = {"#v": "version"}
        values: dict[str, Any] = {":v0": _n(expected_version), ":v1": _n(expected_version + 1)}
        sets = ["#v = :v1"]
        removes = []
        if stage_meter is not None:
            sets.append("meter = :meter")
            values[":meter"] = {"S": stage_meter}
        for i, (batch_id, batch) in enumerate(open_add.items()):
            names[f"#a{i}"] = batch_id
            values[f":a{i}"] = {"M": _item(_open_entry(batch))}
            sets.append(f"#open.#a{i} = :a{i}")
        for i, batch_id in enumerate(b for b in open_remove if b not in open_add):
            names[f"#r{i}"] = batch_id
            removes.append(f"#open.#r{i}")
        if open_add or removes:
            names["#open"] = "open"
        if done_until is not None:
            sets.append("done_until = :du")
            values[":du"] = _n(done_until)
        if keys_summary is not None:
            sets.append("#keys = :keys")
            names["#keys"] = "keys"
            values[":keys"] = {"S": json.dumps(dict(keys_summary), separators=(",", ":"))}
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        return {
            "TableName": self._table,
            "Key": {"pk": {"S": USAGE_KEY}},
            "UpdateExpression": expression,
            "ConditionExpression": "#v = :v0",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def commit_usage(
        self,
        expected_version: int,
        stage_meter: str | None,
        key_meters: Mapping[str, KeyMeterWrite],
        open_add: Mapping[str, OpenBatch],
        open_remove: Iterable[str],
        done_until: float | None = None,
        keys_summary: Mapping[str, Any] | None = None,
    ) -> bool:
        if len(key_meters) > MAX_KEYS_PER_COMMIT:
            raise ValueError(f"at most {MAX_KEYS_PER_COMMIT} key meters per commit")
        if expected_version == 0:
            # The first write creates the item (with its `open` map, which later updates set paths in).
            body: dict[str, Any] = {
                "pk": USAGE_KEY,
                "version": 1,
                "open": {b: _open_entry(o) for b, o in open_add.items()},
            }
            if stage_meter is not None:
                body["meter"] = stage_meter
            if done_until is not None:
                body["done_until"] = done_until
            if keys_summary is not None:
                body["keys"] = json.dumps(dict(keys_summary), separators=(",", ":"))
            usage_write: dict[str, Any] = {
                "Put": {"TableName": self._table, "Item": _item(body), "ConditionExpression": "attribute_not_exists(pk)"}
            }
        else:
            usage_write = {
                "Update": self._usage_update(expected_version, stage_meter, open_add, open_remove, done_until, keys_summary)
            }
        if not key_meters:
            kind, spec = next(iter(usage_write.items()))
            return self._conditional("put_item" if kind == "Put" else "update_item", **spec)
        actions = [usage_write] + [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": _item({"pk": KEY_USAGE_PREFIX + k, "meter": w.meter_json, TTL_ATTRIBUTE: int(w.ttl_at)}),
                }
            }
            for k, w in key_meters.items()
        ]
        try:
            self._client.transact_write_items(TransactItems=actions)
            return True
        except ClientError as exc:
            error = exc.response["Error"]
            if error["Code"] == "TransactionCanceledException":
                reasons = exc.response.get("CancellationReasons") or []
                first = (reasons[0] or {}).get("Code") if reasons else None
                if first in ("ConditionalCheckFailed", CONDITION_FAILED) or "ConditionalCheckFailed" in str(
                    error.get("Message", "")
                ):
                    return False
            raise StoreError(f"dynamodb transact_write_items failed: {error['Code']}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb transact_write_items failed: {type(exc).__name__}") from exc

    def close_open_batches(self, batch_ids: Iterable[str]) -> None:
        ids = list(batch_ids)
        if not ids:
            return
        names = {"#open": "open", **{f"#r{i}": b for i, b in enumerate(ids)}}
        self._conditional(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": USAGE_KEY}},
            UpdateExpression="REMOVE " + ", ".join(f"#open.#r{i}" for i in range(len(ids))),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
        )

    # ------------------------------------------------------------------ attempts and successes
    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        response = self._call(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": ATTEMPTS_PREFIX + job_id}},
            UpdateExpression="ADD #count :one SET #ttl = :ttl",
            ExpressionAttributeNames={"#count": "count", "#ttl": TTL_ATTRIBUTE},
            ExpressionAttributeValues={":one": {"N": "1"}, ":ttl": {"N": str(int(ttl_at))}},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["count"]["N"])

    def get_attempts(self, job_ids: Sequence[str]) -> dict[str, int]:
        found = self._get_many([ATTEMPTS_PREFIX + j for j in job_ids])
        return {j: int((found.get(ATTEMPTS_PREFIX + j) or {}).get("count", 0)) for j in job_ids}

    def reset_attempts(self, job_ids: Sequence[str]) -> None:
        self._write_many([{"DeleteRequest": {"Key": {"pk": {"S": ATTEMPTS_PREFIX + j}}}} for j in dict.fromkeys(job_ids)])

    def mark_done(self, job_ids: Sequence[str], ttl_at: float) -> None:
        ttl = {"N": str(int(ttl_at))}
        self._write_many(
            [{"PutRequest": {"Item": {"pk": {"S": DONE_PREFIX + j}, TTL_ATTRIBUTE: ttl}}} for j in dict.fromkeys(job_ids)]
        )

    def done_ids(self, job_ids: Sequence[str]) -> set[str]:
        found = self._get_many([DONE_PREFIX + j for j in job_ids], projection="pk")
        return {j for j in job_ids if DONE_PREFIX + j in found}

    def read_batches(self, batch_ids: Sequence[str]) -> dict[str, BatchRecord]:
        found = self._get_many([BATCH_PREFIX + b for b in batch_ids])
        return {b: _batch(found[BATCH_PREFIX + b]) for b in batch_ids if BATCH_PREFIX + b in found}


class DynamoWorkerRecords(_Table, WorkerRecords):
    """The worker's view: `worker#*` items only (its IAM role allows nothing else)."""

    def claim(self, batch_id: str, run_id: str, now: float, ttl_at: float) -> bool:
        return self._conditional(
            "put_item",
            TableName=self._table,
            Item=_item(
                {"pk": BATCH_PREFIX + batch_id, "run": run_id, "claimed_at": now, "final": False, TTL_ATTRIBUTE: int(ttl_at)}
            ),
            ConditionExpression="attribute_not_exists(pk)",
        )

    def record(
        self,
        batch_id: str,
        succeeded: Iterable[str],
        called: Iterable[str],
        final: bool,
        throttled_at: float | None = None,
        met_429: ThrottleSignal | None = None,
    ) -> None:
        ok, tried = sorted(set(succeeded)), sorted(set(called))
        adds, sets = [], []
        values: dict[str, Any] = {}
        if ok:
            adds.append("#ok :ok")
            values[":ok"] = {"SS": ok}
        if tried:
            adds.append("#called :called")
            values[":called"] = {"SS": tried}
        if final:
            sets.append("#final = :t")
            values[":t"] = {"BOOL": True}
        if throttled_at is not None:
            sets.append("#th = :th")
            values[":th"] = _n(throttled_at)
        if met_429 is not None:
            sets.append("#m429 = :m429")
            values[":m429"] = _SER.serialize(_ddb(signal_fields(met_429)))
        if not values:
            return
        # Names always through placeholders: FINAL and CALLED are reserved words.
        names = {"#ok": "ok", "#called": "called", "#final": "final", "#th": "throttled_at", "#m429": "met_429"}
        expression = " ".join(
            part for part in ("SET " + ", ".join(sets) if sets else "", "ADD " + ", ".join(adds) if adds else "") if part
        )
        used = {k: v for k, v in names.items() if k in expression}
        self._call(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": BATCH_PREFIX + batch_id}},
            UpdateExpression=expression,
            ExpressionAttributeNames=used,
            ExpressionAttributeValues=values,
        )

    def throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        # ThrottleSignal.replaces, as a condition on the signal's own scope: of two the later end stays; one
        # dated implausibly far ahead (a clock gone wrong, a forged write) gives way to a real 429.
        stored = throttle_fields(signal)
        fields = {f"#{name}": name for name in stored}
        values = {f":{name}": _SER.serialize(_ddb(v)) for name, v in stored.items()}
        ahead = _n(max(signal.at, now or signal.at) + THROTTLE_SKEW_S)
        if signal.key is None:
            # The stage's signal is the item's top level (an older format's key signal there gives way).
            sets = ", ".join(f"#{name} = :{name}" for name in stored)
            removes = " REMOVE #key" + ("" if signal.retry_after_s is not None else ", #retry_after_s")
            self._conditional(
                "update_item",
                TableName=self._table,
                Key={"pk": {"S": THROTTLE_KEY}},
                UpdateExpression=f"SET {sets}{removes}",
                ConditionExpression=(
                    "attribute_not_exists(#at) OR #at > :ahead OR attribute_exists(#key)"
                    " OR attribute_not_exists(#ends) OR #ends < :ends"
                ),
                ExpressionAttributeNames={**fields, "#key": "key", "#retry_after_s": "retry_after_s", "#ends": "ends"},
                ExpressionAttributeValues={**values, ":ahead": ahead},
            )
            return
        self._conditional(
            "update_item",
            TableName=self._table,
            Key={"pk": {"S": KEY_THROTTLE_KEY}},
            UpdateExpression="SET #k = :signal",  # an item of the keys' own (created by the first)
            ConditionExpression="attribute_not_exists(#k) OR #k.#at > :ahead OR #k.#ends < :ends",
            ExpressionAttributeNames={"#k": KEY_SIGNAL_PREFIX + signal.key, "#at": "at", "#ends": "ends"},
            ExpressionAttributeValues={
                ":signal": _SER.serialize(_ddb(stored)),
                ":ahead": ahead,
                ":ends": _n(signal.ends_at),
            },
        )

    def watch(self, batch_ids: Sequence[str]) -> tuple[list[ThrottleSignal], set[str]]:
        found = self._get_many([THROTTLE_KEY, KEY_THROTTLE_KEY, *(BATCH_PREFIX + b for b in batch_ids)])
        final = {b for b in batch_ids if (found.get(BATCH_PREFIX + b) or {}).get("final")}
        stage, keys = read_throttle_items(found.get(THROTTLE_KEY), found.get(KEY_THROTTLE_KEY))
        return [*([stage] if stage else []), *keys.values()], final


def _lease(item: Mapping[str, Any] | None) -> LeaseState | None:
    if not item:
        return None
    until = item.get("successor_until")
    successor = item.get("successor")
    runs_until = item.get("runs_until")
    return LeaseState(
        str(item["owner"]),
        float(item["expires_at"]),
        str(successor) if successor else None,
        float(until) if until is not None else None,
        float(runs_until) if runs_until is not None else None,
    )


def _batch(item: Mapping[str, Any]) -> BatchRecord:
    throttled = item.get("throttled_at")
    return BatchRecord(
        str(item["pk"])[len(BATCH_PREFIX) :],
        str(item.get("run", "")),
        float(item.get("claimed_at", 0.0)),
        frozenset(item.get("ok") or ()),
        frozenset(item.get("called") or ()),
        bool(item.get("final")),
        float(throttled) if throttled is not None else None,
        stored_signal(item.get("met_429")),
    )
