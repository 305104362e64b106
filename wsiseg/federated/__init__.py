"""Federated training: FedAvg and DP-FedAvg aggregation, strategies, clients and the round loop.

Aggregation maths (:mod:`wsiseg.federated.aggregate`) are pure functions over ``dict[str, np.ndarray]``
updates; the in-process simulation and the Flower apps share them.
"""
