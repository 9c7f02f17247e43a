"""`python -m ovs_ros.node`."""
import sys

from ovs_ros.node.main import main

sys.exit(main())
