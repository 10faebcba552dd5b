from django.urls import path
from uploads import views

urlpatterns = [
    path("", views.home, name="home"),
    path("upload/", views.upload, name="upload"),
    path("jobs/<str:job_id>/", views.job, name="job"),
    path("thumbnails/<path:name>", views.thumbnail_file, name="thumbnail_file"),
    path("signup/", views.signup, name="signup"),
]
