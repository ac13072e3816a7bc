"""``manage.py acceld_recover``: one reaper sweep now (the qcluster runs it on its own every few seconds)."""
from django.core.management.base import BaseCommand

from conversions.recovery import recover_interrupted


class Command(BaseCommand):
    help = "Re-queue (or fail) conversions whose worker died."

    def handle(self, *args, **options):
        counts = recover_interrupted()
        self.stdout.write(f"re-queued {counts['requeued']}, failed {counts['failed']}")
