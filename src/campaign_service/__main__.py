"""`python -m campaign_service` is the same as the `campaign-service` command."""

import sys

from campaign_service.cli import main

sys.exit(main())
