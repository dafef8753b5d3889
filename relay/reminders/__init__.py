"""Show reminders (开播提醒): Web Push subscriptions of a show and the messages sent when it goes live."""
