"""``python -m course_utils``: the same as the ``course-utils`` command."""

import sys

from course_utils.cli import main

sys.exit(main())
