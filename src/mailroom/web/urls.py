from django.contrib.auth import views as auth_views
from django.urls import path

from mailroom.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("mailboxes/status", views.mailbox_status, name="mailbox-status"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(template_name="web/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/"), name="logout"),
]
