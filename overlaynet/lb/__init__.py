"""Service VIPs in nftables: ``rules`` (the desired state and the nft scripts, pure) and
``apply`` (running ``nft -f``, conntrack clean-up, the :class:`~overlaynet.lb.apply.LoadBalancer`)."""
