"""The Ray batch engine on a 2-node cluster on this machine (``ray.cluster_utils.Cluster``): both nodes work."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import make_utk_folder
from core import engine_ray
from core.batch import Settings, list_sources


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 2 logical CPUs each (4 in all: two actors of one CPU leave each node one for reading)."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    try:
        assert engine_ray.start(nodes.address)
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def test_both_nodes_read_and_run_the_models(cluster, tmp_path, astronaut_chip, tiny_models):
    make_utk_folder(tmp_path, astronaut_chip, n=16)
    sources = list_sources([str(tmp_path)])
    assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
    ds = engine_ray.rows_dataset(sources, Settings(models_dir=str(tiny_models)), concurrency=2, batch_size=2,
                                 images_per_task=2)
    table = engine_ray.collect(ds)
    assert table.num_rows == len(sources) and set(table.column("status").to_pylist()) == {"ok"}
    assert len(set(table.column("read_node").to_pylist())) == 2  # the read stage ran on both nodes
    assert len(set(table.column("model_node").to_pylist())) == 2  # and so did the actor pool
