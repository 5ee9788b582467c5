"""The example app's job: kiq workers require this module (kiq start -r jobs)."""

from __future__ import annotations

from models import Session, User

import kiq


class WelcomeJob(kiq.Job):
    queue = "mailers"

    def perform(self, user: User, greeting: str = "Welcome") -> None:
        print(f"{greeting}, {user.email}! (job {self.jid})", flush=True)
        user.welcomed = True
        Session.commit()
