"""The sweep engine, laid out by the data flow of a sweep:

* :mod:`.hub`: reading the Hub (client, model, snapshot);
* :mod:`.signals`: what else is read about servers (kernel probes, pods, Prometheus);
* :mod:`.rules`: pure rules (policy, selection, which servers need which signal, decisions);
* :mod:`.sweep`: the sweep that wires them (runner, gathering, status, notifications, memory).

Imports go one way: ``hub`` and ``rules`` know nothing of ``signals`` and ``sweep``;
``signals`` knows ``hub`` and ``rules``; ``sweep`` knows everything. Nothing in this package
imports kopf or a Kubernetes client: ``hubcull sweep`` runs it with no cluster at all, and the
operator (:mod:`hubcull.k8s`) feeds it what only Kubernetes knows (Secrets, pods) through small
interfaces.
"""
