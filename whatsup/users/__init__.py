"""Account life: registration, bans and deletion, push notifications."""
