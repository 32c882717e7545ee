"""features.executor ray on more than one node: a head and a second node on this machine, each with its own raylet,
object store, ports and temp folder (Ray's own multi-node test cluster, ray.cluster_utils.Cluster, on 127.0.0.1:
`ray start` on Linux listens on every interface once a second node may join). Actors land on both nodes, the features
equal the local executor's, and neither node is left with a copy of the model."""

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from dogscats.engine.ray_executor import ray_feature_batches

from .test_ray_executor import local_features, photos  # noqa: F401 (a fixture)

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time: these tests share a worker (pytest -n)


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes of one CPU each on 127.0.0.1, this process its driver, and the nodes' temp folders
    (short paths: Ray's sockets live there), removed after the module's tests."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    address = os.environ.pop("RAY_ADDRESS", None)  # never the developer's cluster
    folders = [Path(tempfile.mkdtemp(prefix=f"dogscats-node{i}-")) for i in range(2)]
    head = {"num_cpus": 1, "temp_dir": str(folders[0]), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(num_cpus=1, temp_dir=str(folders[1]))
        ray.init(address=cluster.address, logging_level="ERROR")
        yield ray, folders
    finally:
        ray.shutdown()
        cluster.shutdown()
        if address is not None:
            os.environ["RAY_ADDRESS"] = address
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def copies_of(data: bytes, places: list[Path]) -> list[Path]:
    """The files among or under the places whose bytes are data."""
    return [
        path
        for place in places
        for path in (place.rglob("*") if place.is_dir() and not place.is_symlink() else [place])
        if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data
    ]


@pytest.mark.slow
def test_actors_on_two_nodes_give_the_local_features_and_leave_no_copy_of_the_model(two_nodes, photos):  # noqa: F811
    ray, folders = two_nodes
    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 2 and {node["NodeManagerAddress"] for node in alive} == {"127.0.0.1"}
    extraction, paths, usable = photos
    model = Path(extraction.model).read_bytes()
    nowhere = dataclasses.replace(extraction, model=str(Path(extraction.model).parent / "on-no-node" / "tiny.onnx"))
    temp = Path(tempfile.gettempdir())  # where the nodes' processes make temporary files
    before = set(temp.iterdir())
    nodes: set[str] = set()  # the model file is on no node: only its bytes travel, through the object store
    batches = list(ray_feature_batches(nowhere, paths, usable, batch_size=2, actors=2, nodes=nodes, model=model))
    assert nodes == {node["NodeID"] for node in alive}  # an actor a node: each computed some of the photos
    np.testing.assert_allclose(np.concatenate(batches), local_features(extraction, paths, usable, 2), rtol=0, atol=1e-6)
    assert copies_of(model, [*folders, *(set(temp.iterdir()) - before)]) == []
    assert not Path(nowhere.model).parent.exists()
