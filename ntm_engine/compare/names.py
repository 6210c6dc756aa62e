"""The names the ``ntm compare`` options offer, without importing diffusers (the ``ntm``
parser is built at every start): scheduler names (the keys of
:data:`.schedulers.SCHEDULERS`) and the default step counts of the comparison."""

SCHEDULER_NAMES = ("flow_euler", "flow_heun", "dpmpp_2m", "unipc")
STEPS = (1, 2, 4, 8, 16, 32, 50)
