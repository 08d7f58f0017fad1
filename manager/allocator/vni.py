"""VXLAN network identifiers (pure): one per overlay network, from 4096 to 2^24-1.

Follows swarmkit's overlay driver allocator (``vxlanIDStart = 4096``, ``vxlanIDEnd = 2^24-1``;
IDs below 4096 are left to VLAN-numbered setups). Allocation is serial (the next free ID after the
last one handed out, wrapping). The VNI is stored in the network's ``DriverState.Options`` under
:data:`VNI_OPTION` as a decimal string (Docker's ``com.docker.network.driver.overlay.vxlanid_list``).
"""

from __future__ import annotations

from manager.allocator.errors import InvalidArgument, VNIExhausted

__all__ = ["VNI_MAX", "VNI_MIN", "VNI_OPTION", "VNIAllocator", "parse_vni"]

VNI_MIN = 4096
VNI_MAX = (1 << 24) - 1
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def parse_vni(value: object) -> int:
    """The first VNI of a ``vxlanid_list`` option value (``"4097"`` or ``"4097,4098"``) or an int.
    Raises :class:`InvalidArgument` if it is not a number in [4096, 2^24-1]."""
    text = str(value).split(",")[0].strip()
    try:
        vni = int(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid VXLAN ID {value!r}") from e
    if not VNI_MIN <= vni <= VNI_MAX:
        raise InvalidArgument(f"VXLAN ID {vni} is out of range [{VNI_MIN}, {VNI_MAX}]")
    return vni


class VNIAllocator:
    """Which VNIs are in use (VNI -> network ID)."""

    def __init__(self, low: int = VNI_MIN, high: int = VNI_MAX) -> None:
        self.low, self.high = low, high
        self._owner: dict[int, str] = {}
        self._cursor = low - 1

    def allocate(self, network_id: str) -> int:
        """The next free VNI, now owned by ``network_id``. Raises :class:`VNIExhausted`."""
        span = self.high - self.low + 1
        # free IDs are dense after the cursor unless nearly everything is used: bounded by len(used)+1
        for step in range(min(span, len(self._owner) + 1)):
            vni = self.low + (self._cursor - self.low + 1 + step) % span
            if vni not in self._owner:
                self._owner[vni] = network_id
                self._cursor = vni
                return vni
        raise VNIExhausted(f"no free VXLAN ID left in [{self.low}, {self.high}]")

    def reserve(self, vni: int, network_id: str) -> None:
        """Record that ``network_id`` holds ``vni`` (rebuild, or a user-chosen ID).
        Raises :class:`InvalidArgument` if it is out of range or held by another network."""
        if not self.low <= vni <= self.high:
            raise InvalidArgument(f"VXLAN ID {vni} is out of range [{self.low}, {self.high}]")
        owner = self._owner.get(vni)
        if owner is not None and owner != network_id:
            raise InvalidArgument(f"VXLAN ID {vni} is already in use by network {owner}")
        self._owner[vni] = network_id

    def owner(self, vni: int) -> str | None:
        """The network holding ``vni``, or None."""
        return self._owner.get(vni)

    def release(self, vni: int, network_id: str) -> None:
        """Free ``vni`` if ``network_id`` holds it; anything else does nothing."""
        if self._owner.get(vni) == network_id:
            del self._owner[vni]
