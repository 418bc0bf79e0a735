"""Interoperability with the official LeWM material: checkpoints in and out, dataset checks."""

from lewm.interop.inspect import DatasetReport, inspect_dataset
from lewm.interop.layout import write_official_layout
from lewm.interop.official import (
    OfficialCheckpointError,
    encoder_key_map,
    export_official,
    from_official,
    import_official,
    model_config_from_official,
    official_config,
    read_weights,
    to_official,
)

__all__ = [
    "write_official_layout",
    "DatasetReport",
    "OfficialCheckpointError",
    "encoder_key_map",
    "export_official",
    "from_official",
    "import_official",
    "inspect_dataset",
    "model_config_from_official",
    "official_config",
    "read_weights",
    "to_official",
]
