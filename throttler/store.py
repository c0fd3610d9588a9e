"""The state table behind an interface: quotas, pause, lease, usage, attempts and success records.

`StateStore` states the contract; `DynamoStateStore` is the production backend (injected client),
`MemoryStateStore` the one unit tests use. One contract suite (tests/contract) runs against both.
Expected outcomes (a lease held by someone else, a usage write that lost a race) are return values.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from throttler.core.errors import StoreError

QUOTAS_KEY = "quotas"
LAST_GOOD_KEY = "quotas#last-good"
PAUSE_KEY = "pause"
LEASE_KEY = "lease"
USAGE_KEY = "usage"
DONE_PREFIX = "done#"
ATTEMPTS_PREFIX = "attempts#"
TTL_ATTRIBUTE = "ttl"


@dataclass(frozen=True)
class Control:
    """What a run re-reads every few seconds: quota item, last good quota item, pause."""

    quotas: dict[str, Any] | None
    last_good: dict[str, Any] | None
    pause_until: float | None
    pause_reason: str | None


@dataclass(frozen=True)
class UsageRecord:
    version: int
    ledgers_json: str | None
    last_slot: float | None


class StateStore(ABC):
    """Contract shared by every backend. Times are epoch seconds passed in by the caller."""

    @abstractmethod
    def read_control(self) -> Control:
        """Quota item, last good quota item and pause, in one read."""

    @abstractmethod
    def put_quotas(self, item: Mapping[str, Any]) -> None:
        """Replace the quota item (the CLI validates first)."""

    @abstractmethod
    def put_last_good(self, item: Mapping[str, Any]) -> None:
        """Remember a quota item that validated, for when a later edit does not."""

    @abstractmethod
    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        """Pause dispatch until `until`; with extend_only an earlier deadline never shortens it."""

    @abstractmethod
    def clear_pause(self) -> None:
        """Resume at once."""

    @abstractmethod
    def acquire_lease(self, owner: str, now: float, ttl_s: float) -> bool:
        """Take or renew the stage's single run lease; False if another live owner holds it."""

    @abstractmethod
    def release_lease(self, owner: str) -> None:
        """Give the lease back if `owner` still holds it."""

    @abstractmethod
    def load_usage(self) -> UsageRecord:
        """The reservation ledgers and their version (0 when none was ever written)."""

    @abstractmethod
    def save_usage(self, expected_version: int, ledgers_json: str, last_slot: float | None) -> bool:
        """Write ledgers at version+1 if the stored version is still `expected_version`."""

    @abstractmethod
    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        """Count one real attempt of a job; returns the new total."""

    @abstractmethod
    def get_attempts(self, job_id: str) -> int:
        """Real attempts made so far (0 if none)."""

    @abstractmethod
    def done_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these jobs already succeeded."""

    @abstractmethod
    def mark_done(self, job_ids: Iterable[str], ttl_at: float) -> None:
        """Record that these jobs succeeded, so that they are never called again."""


class MemoryStateStore(StateStore):
    """In-process backend with the same semantics (thread-safe)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def read_control(self) -> Control:
        with self._lock:
            pause = self.items.get(PAUSE_KEY)
            last_good = self.items.get(LAST_GOOD_KEY)
            quotas = self.items.get(QUOTAS_KEY)
            return Control(
                dict(quotas) if quotas else None,
                json.loads(last_good["item"]) if last_good else None,
                float(pause["until"]) if pause else None,
                pause.get("reason") if pause else None,
            )

    def put_quotas(self, item: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[QUOTAS_KEY] = {**item, "pk": QUOTAS_KEY}

    def put_last_good(self, item: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[LAST_GOOD_KEY] = {"pk": LAST_GOOD_KEY, "item": _item_json(item)}

    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        with self._lock:
            current = self.items.get(PAUSE_KEY)
            if extend_only and current and float(current["until"]) >= until:
                return
            self.items[PAUSE_KEY] = {"pk": PAUSE_KEY, "until": until, "reason": reason}

    def clear_pause(self) -> None:
        with self._lock:
            self.items.pop(PAUSE_KEY, None)

    def acquire_lease(self, owner: str, now: float, ttl_s: float) -> bool:
        with self._lock:
            lease = self.items.get(LEASE_KEY)
            if lease and lease["owner"] != owner and float(lease["expires_at"]) > now:
                return False
            self.items[LEASE_KEY] = {"pk": LEASE_KEY, "owner": owner, "expires_at": now + ttl_s}
            return True

    def release_lease(self, owner: str) -> None:
        with self._lock:
            if self.items.get(LEASE_KEY, {}).get("owner") == owner:
                del self.items[LEASE_KEY]

    def load_usage(self) -> UsageRecord:
        with self._lock:
            usage = self.items.get(USAGE_KEY)
            if not usage:
                return UsageRecord(0, None, None)
            return UsageRecord(usage["version"], usage["ledgers"], usage.get("last_slot"))

    def save_usage(self, expected_version: int, ledgers_json: str, last_slot: float | None) -> bool:
        with self._lock:
            current = self.items.get(USAGE_KEY, {}).get("version", 0)
            if current != expected_version:
                return False
            self.items[USAGE_KEY] = {
                "pk": USAGE_KEY, "version": expected_version + 1, "ledgers": ledgers_json, "last_slot": last_slot,
            }
            return True

    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        with self._lock:
            item = self.items.setdefault(ATTEMPTS_PREFIX + job_id, {"count": 0})
            item["count"] += 1
            item[TTL_ATTRIBUTE] = ttl_at
            return int(item["count"])

    def get_attempts(self, job_id: str) -> int:
        with self._lock:
            return int(self.items.get(ATTEMPTS_PREFIX + job_id, {}).get("count", 0))

    def done_ids(self, job_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {j for j in job_ids if DONE_PREFIX + j in self.items}

    def mark_done(self, job_ids: Iterable[str], ttl_at: float) -> None:
        with self._lock:
            for job_id in job_ids:
                self.items[DONE_PREFIX + job_id] = {TTL_ATTRIBUTE: ttl_at}


def _item_json(item: Mapping[str, Any]) -> str:
    """An item as JSON, whatever an operator typed into it: numbers, sets, lists and maps at any depth
    (a hand-edited `updated_at` holding a number set must not crash the run that reads it)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, (set, frozenset)):
            return sorted(plain(v) for v in value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return json.dumps({k: plain(v) for k, v in item.items() if k != "pk"}, sort_keys=True, default=str)


class DynamoStateStore(StateStore):
    """DynamoDB backend: one table per stage, string partition key `pk`, TTL on `ttl`."""

    def __init__(self, client: Any, table_name: str):
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._client = client
        self._table = table_name
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    def _to_plain(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._de.deserialize(v) for k, v in item.items()}

    def _to_ddb(self, item: Mapping[str, Any]) -> dict[str, Any]:
        def conv(value: Any) -> Any:
            if isinstance(value, float):
                return Decimal(repr(value))
            if isinstance(value, list):
                return [conv(v) for v in value]
            return value

        return {k: self._ser.serialize(conv(v)) for k, v in item.items()}

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            raise StoreError(f"dynamodb {operation} failed: {exc.response['Error']['Code']}") from exc

    def read_control(self) -> Control:
        keys = [{"pk": {"S": k}} for k in (QUOTAS_KEY, LAST_GOOD_KEY, PAUSE_KEY)]
        response = self._call(
            "batch_get_item", RequestItems={self._table: {"Keys": keys, "ConsistentRead": True}}
        )
        found = {i["pk"]["S"]: self._to_plain(i) for i in response["Responses"].get(self._table, [])}
        if response.get("UnprocessedKeys"):
            raise StoreError("dynamodb batch_get_item left keys unprocessed")
        pause = found.get(PAUSE_KEY)
        last_good = found.get(LAST_GOOD_KEY)
        return Control(
            found.get(QUOTAS_KEY),
            json.loads(last_good["item"]) if last_good else None,
            float(pause["until"]) if pause else None,
            str(pause.get("reason")) if pause else None,
        )

    def put_quotas(self, item: Mapping[str, Any]) -> None:
        self._call("put_item", TableName=self._table, Item=self._to_ddb({**item, "pk": QUOTAS_KEY}))

    def put_last_good(self, item: Mapping[str, Any]) -> None:
        body = {"pk": LAST_GOOD_KEY, "item": _item_json(item)}
        self._call("put_item", TableName=self._table, Item=self._to_ddb(body))

    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        kwargs: dict[str, Any] = {}
        if extend_only:
            kwargs = {
                "ConditionExpression": "attribute_not_exists(#until) OR #until < :until",
                "ExpressionAttributeNames": {"#until": "until"},
                "ExpressionAttributeValues": {":until": {"N": repr(until)}},
            }
        item = self._to_ddb({"pk": PAUSE_KEY, "until": until, "reason": reason})
        try:
            self._client.put_item(TableName=self._table, Item=item, **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise StoreError(f"dynamodb put_item failed: {exc.response['Error']['Code']}") from exc

    def clear_pause(self) -> None:
        self._call("delete_item", TableName=self._table, Key={"pk": {"S": PAUSE_KEY}})

    def acquire_lease(self, owner: str, now: float, ttl_s: float) -> bool:
        item = self._to_ddb({"pk": LEASE_KEY, "owner": owner, "expires_at": now + ttl_s})
        try:
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #owner = :owner OR expires_at < :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}, ":now": {"N": repr(now)}},
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise StoreError(f"dynamodb put_item failed: {exc.response['Error']['Code']}") from exc

    def release_lease(self, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": LEASE_KEY}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise StoreError(f"dynamodb delete_item failed: {exc.response['Error']['Code']}") from exc

    def load_usage(self) -> UsageRecord:
        response = self._call(
            "get_item", TableName=self._table, Key={"pk": {"S": USAGE_KEY}}, ConsistentRead=True
        )
        if "Item" not in response:
            return UsageRecord(0, None, None)
        item = self._to_plain(response["Item"])
        last_slot = item.get("last_slot")
        return UsageRecord(int(item["version"]), item.get("ledgers"), float(last_slot) if last_slot else None)

    def save_usage(self, expected_version: int, ledgers_json: str, last_slot: float | None) -> bool:
        body: dict[str, Any] = {"pk": USAGE_KEY, "version": expected_version + 1, "ledgers": ledgers_json}
        if last_slot is not None:
            body["last_slot"] = last_slot
        try:
            self._client.put_item(
                TableName=self._table,
                Item=self._to_ddb(body),
                ConditionExpression="attribute_not_exists(pk) OR version = :v"
                if expected_version == 0
                else "version = :v",
                ExpressionAttributeValues={":v": {"N": str(expected_version)}},
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise StoreError(f"dynamodb put_item failed: {exc.response['Error']['Code']}") from exc

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

    def get_attempts(self, job_id: str) -> int:
        response = self._call(
            "get_item", TableName=self._table, Key={"pk": {"S": ATTEMPTS_PREFIX + job_id}}, ConsistentRead=True
        )
        return int(response.get("Item", {}).get("count", {}).get("N", 0))

    def done_ids(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(job_ids))
        done: set[str] = set()
        for start in range(0, len(ids), 100):
            keys = [{"pk": {"S": DONE_PREFIX + j}} for j in ids[start : start + 100]]
            request = {self._table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "pk"}}
            while request:
                response = self._call("batch_get_item", RequestItems=request)
                for item in response["Responses"].get(self._table, []):
                    done.add(item["pk"]["S"][len(DONE_PREFIX) :])
                request = response.get("UnprocessedKeys") or {}
        return done

    def mark_done(self, job_ids: Iterable[str], ttl_at: float) -> None:
        ids = list(dict.fromkeys(job_ids))
        ttl = {"N": str(int(ttl_at))}
        for start in range(0, len(ids), 25):
            writes = [
                {"PutRequest": {"Item": {"pk": {"S": DONE_PREFIX + j}, TTL_ATTRIBUTE: ttl}}}
                for j in ids[start : start + 25]
            ]
            request: dict[str, Any] = {self._table: writes}
            while request:
                response = self._call("batch_write_item", RequestItems=request)
                request = response.get("UnprocessedItems") or {}
