"""JSON the way acceld's Go server writes it (echo's ``c.JSON``): compact, followed by one newline."""
from rest_framework.renderers import JSONRenderer


class AcceldJSONRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        body = super().render(data, accepted_media_type, renderer_context)
        return body + b"\n" if body else body
