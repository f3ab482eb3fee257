from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Target(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: float
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class FinetuneBudget(_message.Message):
    __slots__ = ("epochs", "lr", "schedule", "momentum", "weight_decay", "milestones", "gamma", "lr_alternatives")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MILESTONES_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    LR_ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    lr: float
    schedule: str
    momentum: float
    weight_decay: float
    milestones: _containers.RepeatedScalarFieldContainer[int]
    gamma: float
    lr_alternatives: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, epochs: _Optional[int] = ..., lr: _Optional[float] = ..., schedule: _Optional[str] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., milestones: _Optional[_Iterable[int]] = ..., gamma: _Optional[float] = ..., lr_alternatives: _Optional[_Iterable[float]] = ...) -> None: ...

class ImportanceOptions(_message.Message):
    __slots__ = ("p", "group_reduction", "normalizer", "search_steps", "search_images", "calibration_images", "adaptive_search", "search_workers")
    P_FIELD_NUMBER: _ClassVar[int]
    GROUP_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZER_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_SEARCH_FIELD_NUMBER: _ClassVar[int]
    SEARCH_WORKERS_FIELD_NUMBER: _ClassVar[int]
    p: int
    group_reduction: str
    normalizer: str
    search_steps: int
    search_images: int
    calibration_images: int
    adaptive_search: bool
    search_workers: int
    def __init__(self, p: _Optional[int] = ..., group_reduction: _Optional[str] = ..., normalizer: _Optional[str] = ..., search_steps: _Optional[int] = ..., search_images: _Optional[int] = ..., calibration_images: _Optional[int] = ..., adaptive_search: _Optional[bool] = ..., search_workers: _Optional[int] = ...) -> None: ...

class PruningOptions(_message.Message):
    __slots__ = ("steps", "round_to", "min_channels", "max_layer_ratio", "curve_every", "curve_bn_recalibration", "curve_points", "curve_images")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ROUND_TO_FIELD_NUMBER: _ClassVar[int]
    MIN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAYER_RATIO_FIELD_NUMBER: _ClassVar[int]
    CURVE_EVERY_FIELD_NUMBER: _ClassVar[int]
    CURVE_BN_RECALIBRATION_FIELD_NUMBER: _ClassVar[int]
    CURVE_POINTS_FIELD_NUMBER: _ClassVar[int]
    CURVE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    steps: int
    round_to: int
    min_channels: int
    max_layer_ratio: float
    curve_every: int
    curve_bn_recalibration: bool
    curve_points: int
    curve_images: int
    def __init__(self, steps: _Optional[int] = ..., round_to: _Optional[int] = ..., min_channels: _Optional[int] = ..., max_layer_ratio: _Optional[float] = ..., curve_every: _Optional[int] = ..., curve_bn_recalibration: _Optional[bool] = ..., curve_points: _Optional[int] = ..., curve_images: _Optional[int] = ...) -> None: ...

class SparseTraining(_message.Message):
    __slots__ = ("reg", "auto_grid", "search_fraction", "step_down", "growing_ceiling", "growing_ramp")
    REG_FIELD_NUMBER: _ClassVar[int]
    AUTO_GRID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STEP_DOWN_FIELD_NUMBER: _ClassVar[int]
    GROWING_CEILING_FIELD_NUMBER: _ClassVar[int]
    GROWING_RAMP_FIELD_NUMBER: _ClassVar[int]
    reg: _struct_pb2.Value
    auto_grid: _containers.RepeatedScalarFieldContainer[float]
    search_fraction: float
    step_down: float
    growing_ceiling: float
    growing_ramp: float
    def __init__(self, reg: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., auto_grid: _Optional[_Iterable[float]] = ..., search_fraction: _Optional[float] = ..., step_down: _Optional[float] = ..., growing_ceiling: _Optional[float] = ..., growing_ramp: _Optional[float] = ...) -> None: ...

class LatencyOptions(_message.Message):
    __slots__ = ("batch_size", "threads", "repeats", "warmup", "seconds")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    threads: int
    repeats: int
    warmup: int
    seconds: float
    def __init__(self, batch_size: _Optional[int] = ..., threads: _Optional[int] = ..., repeats: _Optional[int] = ..., warmup: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class PruneConfig(_message.Message):
    __slots__ = ("version", "method", "target", "metanet", "importance", "pruning", "before_pruning", "after_pruning", "sparse", "bn_recalibration_batches", "batch_size", "seed", "data_seed", "device", "latency", "max_wall_seconds", "bn_recalibration_images", "data_workers")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METANET_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    BEFORE_PRUNING_FIELD_NUMBER: _ClassVar[int]
    AFTER_PRUNING_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    BN_RECALIBRATION_BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DATA_SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BN_RECALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    DATA_WORKERS_FIELD_NUMBER: _ClassVar[int]
    version: int
    method: str
    target: Target
    metanet: str
    importance: ImportanceOptions
    pruning: PruningOptions
    before_pruning: FinetuneBudget
    after_pruning: FinetuneBudget
    sparse: SparseTraining
    bn_recalibration_batches: int
    batch_size: int
    seed: int
    data_seed: int
    device: str
    latency: LatencyOptions
    max_wall_seconds: float
    bn_recalibration_images: int
    data_workers: int
    def __init__(self, version: _Optional[int] = ..., method: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., metanet: _Optional[str] = ..., importance: _Optional[_Union[ImportanceOptions, _Mapping]] = ..., pruning: _Optional[_Union[PruningOptions, _Mapping]] = ..., before_pruning: _Optional[_Union[FinetuneBudget, _Mapping]] = ..., after_pruning: _Optional[_Union[FinetuneBudget, _Mapping]] = ..., sparse: _Optional[_Union[SparseTraining, _Mapping]] = ..., bn_recalibration_batches: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., data_seed: _Optional[int] = ..., device: _Optional[str] = ..., latency: _Optional[_Union[LatencyOptions, _Mapping]] = ..., max_wall_seconds: _Optional[float] = ..., bn_recalibration_images: _Optional[int] = ..., data_workers: _Optional[int] = ...) -> None: ...
