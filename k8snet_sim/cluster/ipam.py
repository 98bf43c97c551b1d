"""IP address management: ClusterIPs, per-node pod CIDRs and pod IPs. All deterministic.

* **ClusterIPs** come from ``serviceCIDR``. Like the apiserver we never hand out the network
  or broadcast address, and we reserve the first host address (``10.96.0.1`` for
  ``10.96.0.0/12``) for the ``kubernetes`` Service in ``default`` — it is held even though the
  simulator does not create that Service. Explicit ``spec.clusterIP`` values are reserved first
  (in manifest order), then the others get the lowest free address from ``.2`` upward, in
  manifest order. (The real apiserver picks at random, preferring the upper part of the range;
  we trade that for addresses that depend on nothing but the scenario.)
* **Node pod CIDRs**: a node that names ``podCIDR`` keeps it; the others get, in node order,
  the first ``/nodeCIDRMaskSize`` (default /24) block of the cluster podCIDR not used by any
  node — what the node-IPAM range allocator does. Without explicit CIDRs this is "the i-th /24".
* **Pod IPs**: ``.1`` of the node's podCIDR is the bridge (``cni0``); pods get ``.2``, ``.3`` …
  in the order they are placed; the broadcast address is never used. hostNetwork pods use the
  node's address and consume nothing.

Example
-------
>>> services = ServiceIPAllocator("10.96.0.0/16")
>>> services.reserve("10.96.0.10", "kube-system/kube-dns"), services.allocate_next("default/web")
('10.96.0.10', '10.96.0.2')
>>> assign_node_pod_cidrs("10.244.0.0/16", 24, ["10.244.0.0/24", None, None])
['10.244.0.0/24', '10.244.1.0/24', '10.244.2.0/24']
>>> pods = PodIPAllocator("10.244.1.0/24")
>>> bridge_address("10.244.1.0/24"), pods.allocate_next("default/web-0")
('10.244.1.1', '10.244.1.2')
"""

from __future__ import annotations

from collections.abc import Sequence

from k8snet_sim.net.addr import Cidr, ip, ip_str

KUBERNETES_SERVICE = "default/kubernetes"


class AllocationError(ValueError):
    """A requested value cannot be allocated; the message follows the apiserver's wording."""


class ServiceIPAllocator:
    """ClusterIP bitmap of one serviceCIDR."""

    def __init__(self, cidr: str) -> None:
        self.cidr = Cidr.parse(cidr)
        self.owners: dict[int, str] = {}
        self._scan_from = 1  # every address below this index is taken: allocation stays linear
        if self.cidr.size >= 4:
            self.owners[self.cidr.host(1)] = KUBERNETES_SERVICE

    def _usable(self, address: int) -> bool:
        if self.cidr.size < 4:
            return self.cidr.contains(address)
        return self.cidr.contains(address) and address not in (
            self.cidr.network,
            self.cidr.broadcast,
        )

    def reserve(self, address: str, owner: str) -> str:
        """Hold ``address`` for ``owner`` (``spec.clusterIP``). Raises :class:`AllocationError`."""
        value = ip(address)
        if not self._usable(value):
            raise AllocationError(
                f"provided IP ({address}) is not in the valid range. "
                f"The range of valid IPs is {self.cidr}"
            )
        holder = self.owners.get(value)
        if holder is not None and holder != owner:
            raise AllocationError(f"provided IP ({address}) is already allocated (to {holder})")
        self.owners[value] = owner
        return address

    def allocate_next(self, owner: str) -> str:
        """The lowest free address. Raises :class:`AllocationError` when the range is full."""
        for index in range(self._scan_from, self.cidr.size - 1):
            value = self.cidr.host(index)
            if value not in self.owners:
                self.owners[value] = owner
                self._scan_from = index + 1
                return ip_str(value)
        raise AllocationError(f"range is full: no free ClusterIP left in {self.cidr}")


def bridge_address(pod_cidr: str) -> str:
    """The node's bridge (``cni0``) address: the first host of its podCIDR."""
    return ip_str(Cidr.parse(pod_cidr).host(1))


class PodIPAllocator:
    """Pod IPs of one node: ``.2`` upward (``.1`` is the bridge), never the broadcast."""

    def __init__(self, pod_cidr: str) -> None:
        self.cidr = Cidr.parse(pod_cidr)
        self.next_index = 2
        self.owners: dict[str, str] = {}

    def allocate_next(self, owner: str) -> str:
        if self.next_index >= self.cidr.size - 1:
            raise AllocationError(
                f"pod CIDR {self.cidr} is exhausted ({max(self.cidr.size - 3, 0)} pod addresses)"
            )
        address = ip_str(self.cidr.host(self.next_index))
        self.next_index += 1
        self.owners[address] = owner
        return address


def assign_node_pod_cidrs(
    cluster_pod_cidr: str, mask_size: int, requested: Sequence[str | None]
) -> list[str | None]:
    """Pod CIDR of every node, in node order; None where the cluster range is exhausted."""
    cluster = Cidr.parse(cluster_pod_cidr)
    taken = [Cidr.parse(c) for c in requested if c is not None]
    blocks = (1 << (mask_size - cluster.prefix)) if mask_size >= cluster.prefix else 0
    out: list[str | None] = []
    cursor = 0
    for want in requested:
        if want is not None:
            out.append(want)
            continue
        chosen: str | None = None
        while cursor < blocks:
            block = cluster.subnet(mask_size, cursor)
            cursor += 1
            if not any(block.overlaps(t) for t in taken):
                taken.append(block)
                chosen = str(block)
                break
        out.append(chosen)
    return out
