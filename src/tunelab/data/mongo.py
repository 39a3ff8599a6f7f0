"""MongoDB -> rows: per-label random samples drawn inside the database.

Each label gets ``$match`` + ``$sample`` (the database picks the documents; only the chosen
ones travel). MongoDB's ``$sample`` takes no seed, so the seed orders the result; with
``exact_seed`` the ``_id``s of each label are drawn here with the seed instead, and the
same seed gives the same documents. Credentials come from the URI or from the environment
(MONGODB_URI, MONGODB_USERNAME, MONGODB_PASSWORD), never from a command-line flag.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from typing import Any

from tunelab.errors import TunelabError

Row = dict[str, Any]
_PASSWORD_IN_URI = re.compile(r"(mongodb(?:\+srv)?://[^:/@]+:)[^@]+@")


def redact(uri: str) -> str:
    """The URI with any password replaced, for messages.

    >>> redact("mongodb://ann:s3cret@db.example:27017/x")
    'mongodb://ann:***@db.example:27017/x'
    """
    return _PASSWORD_IN_URI.sub(r"\1***@", uri)


def connect(uri: str | None, timeout_ms: int = 5000) -> Any:
    """A client that has answered a ping, or a clear error naming the (redacted) server."""
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError

    uri = uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise TunelabError("no MongoDB URI: pass --uri or set MONGODB_URI")
    credentials = {}
    if os.environ.get("MONGODB_USERNAME"):
        credentials = {
            "username": os.environ["MONGODB_USERNAME"],
            "password": os.environ.get("MONGODB_PASSWORD", ""),
        }
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, **credentials)
        client.admin.command("ping")
    except OperationFailure as error:
        raise TunelabError(
            f"MongoDB at {redact(uri)} refused us: {error.details or error}"
        ) from None
    except PyMongoError as error:
        first = str(error).split(",")[0]
        raise TunelabError(f"cannot reach MongoDB at {redact(uri)} ({first})") from None
    return client


def pull_per_label(
    client: Any,
    database: str,
    collection: str,
    fields: Sequence[str],
    label_field: str,
    quotas: dict[str, int],
    seed: int,
    exact_seed: bool = False,
) -> list[Row]:
    """``quotas[label]`` documents of each label with ``fields``; a missing field is an error."""
    source = client[database][collection]
    projection = {name: 1 for name in fields} | {label_field: 1}
    rng = random.Random(seed)
    rows: list[Row] = []
    for label, count in quotas.items():
        if exact_seed:
            ids = sorted(d["_id"] for d in source.find({label_field: label}, {"_id": 1}))
            chosen = rng.sample(ids, min(count, len(ids)))
            documents = list(source.find({"_id": {"$in": chosen}}, projection))
        else:
            pipeline = [
                {"$match": {label_field: label}},
                {"$sample": {"size": count}},
                {"$project": projection},
            ]
            documents = list(source.aggregate(pipeline))
        if len(documents) < count:
            found = f"only {len(documents)} documents with {label_field}={label!r}"
            raise TunelabError(f"{database}.{collection}: {found}, {count} asked for")
        rows += sorted(documents, key=lambda d: str(d["_id"]))
    rng.shuffle(rows)
    return [_checked(document, fields, database, collection) for document in rows]


def _checked(document: Row, fields: Sequence[str], database: str, collection: str) -> Row:
    missing = [name for name in fields if name not in document]
    if missing:
        raise TunelabError(
            f"{database}.{collection}: document {document['_id']} has no field {missing[0]!r}"
        )
    return {"_id": str(document["_id"]), **{k: v for k, v in document.items() if k != "_id"}}
