"""The catalogue: models, data files, built variants and machine environments, each stored once."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.tables import (
    Dataset,
    Environment,
    Model,
    Study,
    Variant,
)


def get_or_create_model(s: Session, artifact: dict[str, Any], name: str, created_by: str | None = None) -> Model:
    """The model stored with these bytes, or a new row; the first uploader stays its creator."""
    model = s.scalar(select(Model).where(Model.sha256 == artifact["sha256"]))
    if model is None:
        model = Model(sha256=artifact["sha256"], name=name, format=artifact["format"],
                      size_bytes=artifact["size_bytes"], artifact=artifact, created_by=created_by)
        s.add(model)
        s.flush()
    elif model.artifact != artifact:
        model.artifact = artifact  # a new input spec (e.g. another --seq-len) for the same bytes
    return model


def get_or_create_dataset(s: Session, sha256: str, name: str, size_bytes: int,
                          created_by: str | None = None) -> Dataset:
    dataset = s.scalar(select(Dataset).where(Dataset.sha256 == sha256))
    if dataset is None:
        dataset = Dataset(sha256=sha256, name=name, size_bytes=size_bytes, created_by=created_by)
        s.add(dataset)
        s.flush()
    return dataset


def record_environment(s: Session, data: dict[str, Any]) -> int:
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    env_id = s.scalar(select(Environment.id).where(Environment.fingerprint == fingerprint))
    if env_id is None:
        env = Environment(fingerprint=fingerprint, data=data)
        s.add(env)
        s.flush()
        env_id = env.id
    return env_id


def record_variant(s: Session, model_id: int, chain: str, target: str, path: str | None, size_bytes: int) -> int:
    variant = s.scalar(select(Variant).where(Variant.model_id == model_id, Variant.chain == chain,
                                             Variant.target == target))
    if variant is None:
        variant = Variant(model_id=model_id, chain=chain, target=target, path=path, size_bytes=size_bytes)
        s.add(variant)
        s.flush()
    return variant.id


def referenced_blobs(s: Session) -> set[str]:
    return set(s.scalars(select(Dataset.sha256)))


def upload_bytes(s: Session, user: str | None) -> int:
    """Bytes of the models and data files `user` uploaded first (what counts against a shared server's quota)."""
    if user is None:
        return 0
    models = s.scalar(select(func.coalesce(func.sum(Model.size_bytes), 0)).where(Model.created_by == user))
    data = s.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.created_by == user))
    return int(models or 0) + int(data or 0)


def get_model(s: Session, model_id: int) -> Model | None:
    return s.get(Model, model_id)


def rename_model(s: Session, model_id: int, name: str) -> None:
    model = s.get(Model, model_id)
    if model is None:
        raise KeyError(model_id)
    model.name = name.strip()[:255] or model.name


def delete_model(s: Session, model_id: int) -> None:
    """Delete a model no study uses (studies keep their model: delete them first)."""
    used = s.scalar(select(func.count()).select_from(Study).where(Study.model_id == model_id))
    if used:
        raise ValueError(f"{used} studies use this model; delete them first")
    s.execute(delete(Variant).where(Variant.model_id == model_id))
    s.execute(delete(Model).where(Model.id == model_id))
