from __future__ import annotations

from django.contrib import admin

from mailroom.crm.models import Company, CompanyDomain, Contact, ContactEmail, Deal, IgnoreEntry


class ContactEmailInline(admin.TabularInline):
    model = ContactEmail
    extra = 0
    fields = ("address", "canonical")


class CompanyDomainInline(admin.TabularInline):
    model = CompanyDomain
    extra = 0
    fields = ("domain",)


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "team", "company", "owner", "created_automatically", "created_at")
    list_filter = ("team", "created_automatically")
    search_fields = ("name", "emails__address", "emails__canonical", "phone")
    raw_id_fields = ("company", "owner")
    inlines = [ContactEmailInline]

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        from mailroom.routing.addresses import canonical_address

        for obj in formset.save(commit=False):
            if isinstance(obj, ContactEmail):
                obj.team_id = form.instance.team_id
                obj.address = obj.address.strip().lower()
                obj.canonical = canonical_address(obj.address)
            obj.save()
        for obj in formset.deleted_objects:
            obj.delete()


@admin.register(Company)
class CompanyAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "team", "created_at")
    list_filter = ("team",)
    search_fields = ("name", "domains__domain")
    inlines = [CompanyDomainInline]

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        for obj in formset.save(commit=False):
            if isinstance(obj, CompanyDomain):
                obj.team_id = form.instance.team_id
                obj.domain = obj.domain.strip().lower()
            obj.save()
        for obj in formset.deleted_objects:
            obj.delete()


@admin.register(Deal)
class DealAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "team", "contact", "company", "amount", "stage", "status", "owner")
    list_filter = ("team", "status", "stage")
    search_fields = ("title",)
    raw_id_fields = ("contact", "company", "owner")


@admin.register(IgnoreEntry)
class IgnoreEntryAdmin(admin.ModelAdmin):
    list_display = ("id", "team", "kind", "value", "note", "created_at")
    list_filter = ("team", "kind")
    search_fields = ("value", "note")
