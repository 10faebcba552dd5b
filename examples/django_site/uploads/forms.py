from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import FileExtensionValidator

IMAGE_SUFFIXES = ["jpg", "jpeg", "png", "gif", "webp"]


class UploadForm(forms.Form):
    picture = forms.FileField(validators=[FileExtensionValidator(IMAGE_SUFFIXES)])

    def clean_picture(self) -> UploadedFile:
        picture = self.cleaned_data["picture"]
        if picture.size > settings.MAX_UPLOAD_BYTES:
            raise forms.ValidationError("Choose a picture under 20 MB.")
        return picture


class SignupForm(forms.Form):
    name = forms.CharField(max_length=100)
    email = forms.EmailField()
