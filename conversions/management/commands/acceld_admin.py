"""``manage.py acceld_admin``: make sure an ``admin`` superuser exists with ``$ACCELD_ADMIN_PASSWORD``."""
from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create or update the superuser 'admin' with the password in $ACCELD_ADMIN_PASSWORD (no-op when unset)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        password = os.environ.get("ACCELD_ADMIN_PASSWORD", "")
        if not password:
            self.stdout.write("ACCELD_ADMIN_PASSWORD is not set: no admin user created")
            return
        if len(password) < 8:
            raise CommandError("ACCELD_ADMIN_PASSWORD must have at least 8 characters")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} superuser {username!r}")
