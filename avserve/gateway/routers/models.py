"""GET /v1/models: what this gateway serves, with the inputs and routes clients can rely on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from avserve.backends.base import InferenceBackend
from avserve.repository import ModelSpec

from ..auth import require_api_key
from ..dependencies import get_app_settings, get_backend
from ..errors import ApiError, openapi_errors
from ..routing import default_family, modality_label
from ..schemas import BatchingInfo, FamilyInfo, ModelDetail, ModelInfo, ModelsResponse, TensorInfo
from ..settings import GatewaySettings

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


def _model_info(spec: ModelSpec, backend: InferenceBackend) -> dict:
    policy = backend.batch_policies().get(spec.name)
    return dict(
        name=spec.name,
        family=spec.family,
        architecture=spec.architecture,
        versions=list(spec.versions),
        modalities=sorted(spec.modalities),
        inputs=[TensorInfo(name=t.name, data_type=t.data_type, dims=list(t.dims)) for t in spec.inputs],
        outputs=[TensorInfo(name=t.name, data_type=t.data_type, dims=list(t.dims)) for t in spec.outputs],
        answer_output=spec.answer_output,
        heads=list(spec.heads),
        num_labels=spec.num_classes,
        missing_modality=spec.missing_modality,
        unimodal=spec.unimodal,
        modality_dropout=spec.modality_dropout,
        pretrained=spec.pretrained,
        precision=spec.precision,
        sample_rate=spec.sample_rate,
        clip_seconds=spec.clip_seconds,
        num_frames=spec.num_frames,
        image_size=spec.image_size,
        max_batch_size=spec.max_batch_size,
        batching=None if policy is None else BatchingInfo(
            max_rows=policy.max_rows, reason=policy.reason, ms_per_clip=dict(policy.ms_per_clip),
            partner_wait_ms=round(policy.partner_wait_ms, 3),
        ),
    )  # fmt: skip


@router.get("/models", response_model=ModelsResponse, summary="Served models and routes", responses=openapi_errors(401, 403))
async def list_models(
    backend: Annotated[InferenceBackend, Depends(get_backend)],
    settings: Annotated[GatewaySettings, Depends(get_app_settings)],
) -> ModelsResponse:
    repository = backend.repository
    families = [
        FamilyInfo(name=family, routes={modality_label(m): name for m, name in sorted(routes.items(), key=lambda r: sorted(r[0]))})
        for family, routes in sorted(repository.routes.items())
    ]
    return ModelsResponse(
        backend=backend.name,
        default_family=default_family(repository, settings.default_model),
        families=families,
        models=[ModelInfo(**_model_info(spec, backend)) for _, spec in sorted(repository.models.items())],
    )


@router.get(
    "/models/{name}", response_model=ModelDetail, summary="One served model, with its labels",
    responses=openapi_errors(401, 403, 404),
)  # fmt: skip
async def get_model(name: str, backend: Annotated[InferenceBackend, Depends(get_backend)]) -> ModelDetail:
    spec = backend.repository.models.get(name)
    if spec is None:
        raise ApiError(404, "unknown_model", f"no served model named {name!r}")
    labels = list(spec.labels) or [f"class_{i}" for i in range(spec.num_classes)]
    return ModelDetail(**_model_info(spec, backend), labels=labels)
